"""Latency benchmark of a bundle: per pattern, precision and runner target, plus named paired ratios.

Targets come from the runner registry (runtime.runners): every registered backend's benchmark
variants (onnxruntime: ``cpu``, ``cuda``, ``tensorrt-ep``; native TensorRT: ``tensorrt``), each
built by the same factory ``Runtime.load`` uses, so what is timed is what the runtime runs.

Inputs (``runtime.bench_inputs``) are deterministic synthetic raw samples of valid shape, run
through the bundle's own preprocessing; the full graph with placeholders gets the present
modality's sample and the manifest's placeholder recipe for every other modality.

Timing: ``warmup`` untimed calls, then ``runs`` calls each timed with ``perf_counter_ns``.
Stats are percentiles (never a mean alone). onnxruntime uses ``threads`` intra-op threads
(default 1, DESIGN.md) and one inter-op thread. torch is never imported here: ``torch_speedup`` runs through an entry point.
Passes: the table is one sequential pass per cell; each ratio times its graphs again, alternating
with what it is compared to (a paired pass), and every figure in the report names its pass.
Elsewhere: rendering (JSON/Markdown/PNG) in ``runtime.bench_report``, the machine record and the
cold-start subprocess in ``runtime.bench_env``.
"""
from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime.bench_env import bundle_record, cold_start, machine_record
from runtime.errors import UnknownPrecision
from runtime.bench_inputs import Inputs, synthetic_raw  # noqa: F401 - re-exported for callers and tests
from runtime.errors import MMEdgeError
from runtime.manifest import GraphEntry, Manifest, load_manifest
from runtime.patterns import Pattern
from runtime.runners import GraphSource, Runner, RunnerBackend, RunnerOptions, available_runners, get_runner

TARGETS = {"placeholder_speedup": 0.6, "runtime_overhead_rel": 0.05, "runtime_overhead_abs_ms": 0.05,
           "torch_speedup": 3.0, "cold_s": 1.0, "cold_rss_mb": 200.0}


@dataclass
class BenchConfig:
    bundle: Path
    runs: int = 200
    warmup: int = 20
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    precisions: tuple[str, ...] | None = None  # None: every precision in the bundle
    providers: tuple[str, ...] | None = None  # benchmark targets (see ``targets()``); None: every registered one
    threads: int = 1
    run_dir: Path | None = None  # training run for torch_speedup; None skips it
    cold_start: bool = True
    cache_dir: Path | None = None  # TensorRT EP engine cache
    lengths: dict[str, int] = field(default_factory=dict)  # modality -> input tokens / frames (default: the spec's max)


# --------------------------------------------------------------------------- statistics
def latency_stats(times_s: Sequence[float]) -> dict[str, float]:
    """Percentiles (linear interpolation, numpy's default) and spread of timings, in ms."""
    t = np.asarray(times_s, dtype=np.float64) * 1e3
    if t.size == 0:
        raise ValueError("latency_stats needs at least one timing")
    p50, p90, p99 = np.percentile(t, [50, 90, 99])
    return {"n": int(t.size), "p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99),
            "min_ms": float(t.min()), "max_ms": float(t.max()), "mean_ms": float(t.mean()),
            "std_ms": float(t.std(ddof=1)) if t.size > 1 else 0.0}


def time_calls(fn: Callable[[], Any], warmup: int, runs: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        fn()
        out.append((time.perf_counter_ns() - t0) * 1e-9)
    return out


def time_interleaved(fns: Sequence[Callable[[], Any]], warmup: int, runs: int) -> list[list[float]]:
    """Time several calls alternately, so load from other processes hits each of them alike (for ratios)."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    out: list[list[float]] = [[] for _ in fns]
    for _ in range(runs):
        for fn, acc in zip(fns, out):
            t0 = time.perf_counter_ns()
            fn()
            acc.append((time.perf_counter_ns() - t0) * 1e-9)
    return out


def peak_rss_mb() -> float:
    """Process peak RSS so far (Linux reports KiB; macOS bytes). Monotonic over the run."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


# --------------------------------------------------------------------------- runners
def targets() -> dict[str, tuple[str, dict[str, Any]]]:
    """Every benchmark target of the registered runners: name -> (runner backend, option overrides)."""
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for backend in available_runners():
        for variant, overrides in get_runner(backend).bench_variants().items():
            out.setdefault(variant, (backend, overrides))
    return out


def _target(name: str) -> tuple[RunnerBackend, RunnerOptions]:
    backend, overrides = targets()[name]
    return get_runner(backend), RunnerOptions().replace(**overrides)


def provider_status(name: str, bundle: Path, manifest: Manifest) -> tuple[bool, str]:
    """Whether a target can run here, and why not (the backend's own check)."""
    if name not in targets():
        return False, f"unknown provider {name!r}; choose from {sorted(targets())}"
    backend, opts = _target(name)
    why = backend.check(bundle, manifest, None, opts)
    return why is None, why or ""


def graph_status(name: str, bundle: Path, manifest: Manifest, entry: GraphEntry) -> str | None:
    """Why target ``name`` has nothing to time for ``entry`` (e.g. no engine for it), or None."""
    backend, opts = _target(name)
    return backend.check(bundle, manifest, entry, opts)


def open_runner(name: str, source: GraphSource, threads: int | None, cache_dir: Path | None = None) -> Runner:
    """The runner of ``source`` on target ``name``, built as ``Runtime.load`` builds it."""
    backend, opts = _target(name)
    opts = backend.resolve(opts.replace(threads=threads, trt_cache_dir=cache_dir), Path(source.bundle_dir),
                           source.entry.precision)
    return backend.open(source, opts)


def bench_graph(source: GraphSource, provider: str, feeds_for: Callable[[int], dict[str, np.ndarray]],
                cfg: BenchConfig, batch_sizes: Sequence[int]) -> dict[str, Any]:
    t0 = time.perf_counter()
    runner = open_runner(provider, source, cfg.threads, cfg.cache_dir)
    created = time.perf_counter() - t0
    out: dict[str, Any] = {"session_create_s": created, "providers_in_use": runner.providers_in_use,
                           "fell_back": bool(runner.lost_providers), "batches": {}, "pass": "table"}
    with runner:
        for b in batch_sizes:
            feeds = feeds_for(b)
            try:
                st = latency_stats(time_calls(lambda: runner.run(feeds), cfg.warmup, cfg.runs))
            except MMEdgeError as exc:  # e.g. a batch above a TensorRT engine's optimisation profile
                out.setdefault("errors", {})[str(b)] = f"{type(exc).__name__}: {exc}"
                continue
            st["throughput_per_s"] = b / (st["p50_ms"] * 1e-3)  # samples/s at the median batch latency
            out["batches"][str(b)] = st
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def bench_baseline(graph: GraphEntry, base: GraphEntry, provider: str, inputs: Inputs,
                   cfg: BenchConfig) -> dict[str, Any]:
    """The full graph fed ``graph``'s modality plus placeholders, timed alternately with ``graph`` (batch 1)."""
    manifest = inputs.manifest
    t0 = time.perf_counter()
    sb = open_runner(provider, GraphSource(cfg.bundle, manifest, base), cfg.threads, cfg.cache_dir)
    created = time.perf_counter() - t0
    sg = open_runner(provider, GraphSource(cfg.bundle, manifest, graph), cfg.threads, cfg.cache_dir)
    fb, fg = inputs.feeds(base, 1, present=Pattern.from_key(graph.pattern)), inputs.feeds(graph, 1)
    with sb, sg:
        tb, tg = time_interleaved([lambda: sb.run(fb), lambda: sg.run(fg)], cfg.warmup, cfg.runs)
    st = latency_stats(tb)
    st["throughput_per_s"] = 1 / (st["p50_ms"] * 1e-3)
    return {"session_create_s": created, "providers_in_use": sb.providers_in_use,
            "fell_back": bool(sb.lost_providers), "batches": {"1": st}, "pass": "paired with the pattern's graph",
            "paired_graph": latency_stats(tg), "peak_rss_mb": peak_rss_mb()}


# --------------------------------------------------------------------------- ratios
def _ratio_entry(num: float, den: float, **extra: Any) -> dict[str, Any]:
    return {**extra, "ratio": num / den if den > 0 else float("nan")}


def overhead_ratio(manifest: Manifest, inputs: Inputs, cfg: BenchConfig) -> dict[str, Any]:
    """runtime_overhead: Runtime.predict (raw -> checks -> preprocessing -> graph -> top-k) vs bare ``session.run`` with
    preprocessed feeds on the runtime's own session (same graph, same options), FP32, CPU, batch 1."""
    from runtime.session import Runtime

    note = "runtime.session.Runtime.predict end to end vs the same session's run()"
    rt = Runtime.load(cfg.bundle, precision="fp32", providers=["cpu"], intra_op_threads=cfg.threads)
    predict: Callable[[dict[str, Any]], Any] = rt.predict
    runner_of: Callable[[str], Any] = rt.runner
    entries = []
    for g in (g for g in manifest.graphs if g.precision == "fp32"):
        pat = Pattern.from_key(g.pattern)
        sample = {m: (inputs.raw[m] if m in pat else None) for m in manifest.modalities}
        runner, feeds = runner_of(g.pattern), inputs.feeds(g, 1)
        pre = [inputs.pre[m] for m in sorted(pat)]  # where the overhead goes: numpy preprocessing alone

        def preprocess_only() -> None:
            for p, m in zip(pre, sorted(pat)):
                p([sample[m]])
        inside: list[float] = []  # the runtime's own time in each call: total - time inside session.run

        def predict_timed() -> None:
            t = predict(sample).timings
            inside.append((t["total_ms"] - t["inference_ms"]) * 1e-3)
        t_bare, t_full, t_pre = time_interleaved([lambda: runner.run(feeds), predict_timed, preprocess_only],
                                                 cfg.warmup, cfg.runs)
        bare, full = latency_stats(t_bare), latency_stats(t_full)
        over = full["p50_ms"] - bare["p50_ms"]
        allowed = max(TARGETS["runtime_overhead_rel"] * bare["p50_ms"], TARGETS["runtime_overhead_abs_ms"])
        entries.append({"pattern": g.pattern, "predict": full, "session_run": bare,
                        "preprocess_only": latency_stats(t_pre), "overhead_ms": over,
                        # less exposed to other processes' load: the median of the per-round differences,
                        # and the runtime's own time measured inside each predict call
                        "overhead_paired_ms": float(np.median(np.subtract(t_full, t_bare))) * 1e3,
                        "overhead_inside": latency_stats(inside[cfg.warmup:]) if len(inside) > cfg.warmup else None,
                        "overhead_rel": over / bare["p50_ms"], "allowed_ms": allowed, "met": over <= allowed})
    rt.close()
    return {"note": note, "precision": "fp32", "provider": "cpu", "batch": 1, "entries": entries,
            "pass": "paired: session run, predict and preprocessing alternate", "met": all(e["met"] for e in entries)}


def torch_speedup(manifest: Manifest, inputs: Inputs, cfg: BenchConfig) -> dict[str, Any]:
    """Eager PyTorch vs onnxruntime FP32, through the ``mmedge.bench`` entry point ``torch_speedup``.

    The measurement lives where torch lives (``export.torch_speedup``); the runtime finds it
    only through the installed distribution's entry points, so a runtime-only install
    reports it as skipped instead of importing anything.
    """
    if cfg.run_dir is None:
        return {"skipped": "no training run given: pass --run RUN_DIR (the bundle's manifest does not record it)"}
    from importlib.metadata import entry_points

    found = [ep for ep in entry_points(group="mmedge.bench") if ep.name == "torch_speedup"]
    if not found:
        return {"skipped": "the training extras are not installed (no mmedge.bench entry point torch_speedup); "
                           "pip install 'mmedge[cpu,train]'"}
    try:
        measure = found[0].load()
    except ImportError as exc:
        return {"skipped": f"torch / training extras not importable ({exc}); pip install 'mmedge[cpu,train]'"}
    return measure(manifest, inputs, cfg)


# --------------------------------------------------------------------------- the run
def run_benchmark(cfg: BenchConfig, step: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Every table and ratio, measured in one process; returns the JSON-able record."""
    bundle = Path(cfg.bundle)
    manifest = load_manifest(bundle)
    missing = sorted(set(cfg.precisions or ()) - set(manifest.precisions))
    if missing:
        raise UnknownPrecision(",".join(missing), manifest.precisions)
    precisions = [p for p in manifest.precisions if cfg.precisions is None or p in cfg.precisions]
    inputs = Inputs(manifest, bundle, cfg.lengths)
    rec: dict[str, Any] = {
        "bundle": bundle.name, "method": manifest.method, "dataset": manifest.dataset,
        "settings": {"runs": cfg.runs, "warmup": cfg.warmup, "batch_sizes": list(cfg.batch_sizes),
                     "precisions": precisions, "threads": cfg.threads,
                     "inputs": "deterministic synthetic raw samples (seed 0) through the bundle's preprocessing; "
                               "sequence length = " + (", ".join(f"{m} {n}" for m, n in sorted(cfg.lengths.items()))
                                                       + " as asked; the others " if cfg.lengths else "")
                               + "the spec's max_frames / max_length",
                     "input_shapes": inputs.describe()},
        "machine": machine_record(cfg.threads), "providers": {}, "results": [], "baselines": [], "ratios": {},
        "bundle_info": bundle_record(manifest, bundle)}
    paired: list[dict[str, Any]] = []
    for prov in cfg.providers or tuple(targets()):
        ok, why = provider_status(prov, bundle, manifest)
        rec["providers"][prov] = {"status": "ok"} if ok else {"status": "skipped", "reason": why}
        if not ok:
            continue
        for prec in precisions:
            for g in (g for g in manifest.graphs if g.precision == prec):
                why = graph_status(prov, bundle, manifest, g)
                if why is not None:  # e.g. native TensorRT without an engine for this graph
                    rec["providers"][prov].setdefault("skipped_graphs", {})[f"{prec}/{g.pattern}"] = why
                    continue
                step(f"{prov} {prec} {g.pattern}")
                r = bench_graph(GraphSource(bundle, manifest, g), prov, lambda b, g=g: inputs.feeds(g, b), cfg,
                                cfg.batch_sizes)
                rec["results"].append({"pattern": g.pattern, "precision": prec, "provider": prov, **r})
        for base in (b for b in manifest.baselines if b.precision == "fp32"):
            for m in sorted(manifest.modalities):  # placeholder_speedup: baseline with only m present, paired with m's graph
                if m not in manifest.patterns("fp32"):
                    continue
                graph = manifest.graph(m, "fp32")
                if graph_status(prov, bundle, manifest, base) or graph_status(prov, bundle, manifest, graph):
                    continue  # a backend with no artifact for the baseline (TensorRT builds none)
                step(f"{prov} baseline ({m} present)")
                rec["baselines"].append({"present": m, "file": base.file, "provider": prov,
                                         **bench_baseline(graph, base, prov, inputs, cfg)})
        if len(precisions) > 1:
            step(f"{prov} precisions paired")
            paired += paired_precisions(manifest, inputs, prov, precisions, cfg)
    rec["ratios"]["placeholder_speedup"] = placeholder_ratio(rec)
    rec["ratios"]["precision_speedup"] = precision_ratio(rec, paired)
    step("runtime overhead")
    rec["ratios"]["runtime_overhead"] = overhead_ratio(manifest, inputs, cfg)
    step("onnxruntime vs eager PyTorch")
    rec["ratios"]["torch_speedup"] = (torch_speedup(manifest, inputs, cfg) if "fp32" in manifest.precisions else
                          {"skipped": "the bundle has no fp32 graphs"})
    if cfg.cold_start:
        step("cold start")
        cold = rec["cold_start"] = cold_start(bundle, cfg.threads)
        if "error" not in cold:
            cold["met"] = cold["total_s"] < TARGETS["cold_s"] and cold["peak_rss_mb"] < TARGETS["cold_rss_mb"]
    rec["peak_rss_mb"] = peak_rss_mb()
    return rec


def _p50(r: dict[str, Any], batch: str = "1") -> float:
    return float(r["batches"][batch]["p50_ms"])


def placeholder_ratio(rec: dict[str, Any]) -> dict[str, Any]:
    """placeholder_speedup: single-modality graph vs the full graph with placeholders, FP32, batch 1, per provider.

    Both p50s come from the same alternating measurement (``bench_baseline``), not the main table.
    """
    if not rec["baselines"]:
        return {"skipped": "the bundle has no baseline (export with placeholders enabled)"}
    entries = []
    for b in rec["baselines"]:
        g, base = b["paired_graph"]["p50_ms"], _p50(b)
        e = _ratio_entry(g, base, pattern=b["present"], provider=b["provider"], graph_p50_ms=g, baseline_p50_ms=base,
                         ratio_of_min=b["paired_graph"]["min_ms"] / b["batches"]["1"]["min_ms"])  # least noisy
        entries.append({**e, "met": e["ratio"] <= TARGETS["placeholder_speedup"]})
    return {"target": TARGETS["placeholder_speedup"], "entries": entries, "met": all(e["met"] for e in entries)}


def paired_precisions(manifest: Manifest, inputs: Inputs, provider: str, precisions: Sequence[str],
                      cfg: BenchConfig) -> list[dict[str, Any]]:
    """precision_speedup at batch 1: every precision of a pattern timed alternately, so load from other processes
    (shared cores) does not land on one precision's cells only."""
    out = []
    for key in manifest.patterns("fp32"):
        gs = [manifest.graph(key, p) for p in precisions if key in manifest.patterns(p)]
        gs = [g for g in gs if graph_status(provider, cfg.bundle, manifest, g) is None]
        if len(gs) < 2 or gs[0].precision != "fp32":
            continue
        calls, runners = [], []
        for g in gs:
            runner = open_runner(provider, GraphSource(cfg.bundle, manifest, g), cfg.threads, cfg.cache_dir)
            runners.append(runner)
            calls.append(lambda runner=runner, feeds=inputs.feeds(g, 1): runner.run(feeds))
        stats = [latency_stats(t) for t in time_interleaved(calls, cfg.warmup, cfg.runs)]
        for runner in runners:
            runner.close()
        for g, st in zip(gs[1:], stats[1:]):
            out.append(_ratio_entry(st["p50_ms"], stats[0]["p50_ms"], pattern=key, precision=g.precision,
                                    provider=provider, batch=1, p50_ms=st["p50_ms"], fp32_p50_ms=stats[0]["p50_ms"],
                                    paired=True))
    return out


def precision_ratio(rec: dict[str, Any], paired: list[dict[str, Any]]) -> dict[str, Any]:
    """precision_speedup: latency of FP16 / INT8 over FP32, per pattern, provider and batch size (< 1 is faster):
    batch 1 from ``paired_precisions``; larger batches from the table's cells (measured one after another)."""
    fp32 = {(r["pattern"], r["provider"]): r for r in rec["results"] if r["precision"] == "fp32"}
    entries = list(paired)
    done = {(e["pattern"], e["precision"], e["provider"], "1") for e in paired}
    for r in rec["results"]:
        ref = fp32.get((r["pattern"], r["provider"]))
        if r["precision"] == "fp32" or ref is None:
            continue
        for b in (b for b in r["batches"] if b in ref["batches"]):
            if (r["pattern"], r["precision"], r["provider"], b) in done:
                continue
            entries.append(_ratio_entry(_p50(r, b), _p50(ref, b), pattern=r["pattern"], precision=r["precision"],
                                        provider=r["provider"], batch=int(b), p50_ms=_p50(r, b),
                                        fp32_p50_ms=_p50(ref, b), paired=False))
    return {"entries": entries} if entries else {"skipped": "needs fp32 and another precision in the bundle"}
