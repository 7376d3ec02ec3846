"""`mmedge train compare`: every registered method x seeds under the papers' protocols, one resumable command.

Per run (method x seed), on the same frozen unimodal encoders and the same data subset: the
per-pattern test metric (checkpoint chosen on every pattern's validation metric, ``--select
patterns``), the missing-rate sweep, the Lee et al. eta = 70% train x test grid, parameter
counts, optimiser steps and training time. For the first seed of each method: an fp32 + int8
bundle, its size on disk, and per-pattern onnxruntime latency at batch 1. Layout::

    runs/<dataset>/compare[-full][-<pretrain task>]/
        <method>/seed<k>/              the train_method run (reused when finished)
        <method>/seed<k>/lee/...        the three Lee et al. training cases of that run
        <method>/bundle/                the exported bundle (first seed)
        results.json                    every number, aggregates, claim verdicts, machines, config

results.json is rewritten after every run and every export, so an interrupted comparison
resumes where it stopped: a run whose record matches the current settings is not redone. The
Lee grid is an add-on to a run record (its own eta recorded), so ``--no-lee`` first and the grid
later trains only the grid. Records of methods or seeds left out of this invocation (``--methods``,
``--seeds``) stay in results.json and in the report. One invocation writes a folder at a time: a
second one on the same folder stops at once with a ConfigError (train.engine.folder_lock), since
each would otherwise drop the records the other adds.
The ablation (train.recipes.ablation) is this comparison restricted to three methods, without
the Lee grid and the export.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from runtime.patterns import Pattern, all_patterns
from train.data.types import MultimodalDataset
from train.engine.checkpoint import write_json_atomic
from train.engine.folder_lock import folder_lock
from train.engine.metrics import headline
from train.recipes.ablation import RESULTS, AblationConfig, ensure_unimodal, run_one, settings, summarise
from train.reporting.compare_stats import claims_input, leaderboard, sweep_auc
from train.recipes.method import TrainConfig
from train.recipes.unimodal import unimodal_folder
from train.reporting.claims import claim_verdicts
from train.runs import run_dir
from runtime.errors import ConfigError


@dataclass
class CompareConfig(AblationConfig):
    methods: list[str] = field(default_factory=list)  # empty: every registered method
    batch_size: int = 8  # the CMPT paper's (Table 5); the ablation preset keeps its 32
    lee: bool = True  # the Lee et al. grid: three extra trainings per run
    eta: float = 0.7
    export: bool = True  # fp32 + int8 bundle and latency for the first seed of each method
    latency_runs: int = 200
    latency_warmup: int = 20
    latency_threads: int = 1
    allow_degraded: bool = True  # an int8 graph that misses parity is timed anyway, marked degraded
    report: Path | None = Path("docs/results.md")  # None: results.json only
    label: str = "compare"  # the results folder's stem; the ablation preset says "ablation"


def compare_dir(cfg: CompareConfig) -> Path:
    if cfg.out:
        return Path(cfg.out)
    name = cfg.label + ("-full" if cfg.full else "") + ("" if cfg.pretrain_task == "labels" else f"-{cfg.pretrain_task}")
    return run_dir(cfg.runs_dir, cfg.dataset, name)


def unimodal_dir(cfg: CompareConfig) -> Path:
    return cfg.unimodal_dir or run_dir(cfg.runs_dir, cfg.dataset, unimodal_folder(cfg.pretrain_task))


def resolve_methods(cfg: CompareConfig) -> list[str]:
    """``cfg.methods``, or every registered one; a typo fails before any training."""
    from train.methods import get_method
    from train.methods.registry import available_methods

    methods = list(cfg.methods or available_methods())
    for m in methods:
        get_method(m)
    return methods


def signature(cfg: CompareConfig, eff: dict[str, Any]) -> dict[str, Any]:
    """What a run record depends on: a previous record with another signature is redone.

    The Lee grid is not part of it: the grid is added to a record that lacks it (or has another
    eta) without retraining the run itself.
    """
    return {"effective": eff, "batch_size": cfg.batch_size, "select": cfg.select, "pretrain_task": cfg.pretrain_task,
            "data_seed": cfg.data_seed, "sweep": cfg.sweep}


def _previous(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError:
        return {}


def lee_for_run(cfg: CompareConfig, data: MultimodalDataset, method: str, seed: int, rdir: Path, udir: Path,
                eff: dict[str, Any]) -> dict[str, Any]:
    """The Lee et al. grid for one run; its three training cases live under ``rdir/lee``."""
    from train.recipes.protocols import lee_grid

    base = TrainConfig(method=method, dataset=cfg.dataset, unimodal_dir=udir, epochs=eff["epochs"],
                       warmup_epochs=eff["warmup_epochs"], batch_size=cfg.batch_size, seed=seed, limit=eff["limit"],
                       data_dir=cfg.data_dir, runs_dir=rdir / "lee", progress=cfg.progress, select=cfg.select)
    t0 = time.perf_counter()
    grid = lee_grid(base, eta=cfg.eta, seed=seed, dataset=data, log=lambda s: print(f"[compare] {s}", flush=True))
    cases = grid["cases"]
    out = {k: grid[k] for k in ("eta", "seed", "metric", "cases", "descriptions", "grid", "complete", "runs",
                                "trained")}
    out["three_case_average"] = sum(grid["grid"][c][c] for c in cases) / len(cases)
    out["wall_time_s"] = round(time.perf_counter() - t0, 2)
    return out


def export_and_time(cfg: CompareConfig, data: MultimodalDataset, method: str, rdir: Path, out: Path,
                    seed: int) -> dict[str, Any]:
    """fp32 + int8 bundle of one run, its size on disk, and per-pattern batch-1 onnxruntime latency."""
    # Lazy: train never imports export at module level (export depends on train.runs, not the reverse).
    from export.build import BuildConfig, build_bundle
    from runtime.bench import latency_stats, open_runner, time_calls
    from runtime.bench_env import machine_record
    from runtime.bench_inputs import Inputs
    from runtime.manifest import load_manifest
    from runtime.runners import GraphSource
    from train.runs import load_run

    t0 = time.perf_counter()
    bundle = build_bundle(BuildConfig(method=method, precisions=("fp32", "int8"), run=rdir, out=out,
                                      runs_dir=cfg.runs_dir, data_dir=cfg.data_dir, allow_degraded=cfg.allow_degraded,
                                      placeholders=False, seed=seed, threads=cfg.latency_threads,
                                      progress=cfg.progress),
                          model=load_run(rdir), dataset=data)
    export_s = time.perf_counter() - t0
    manifest = load_manifest(bundle)
    inputs = Inputs(manifest, bundle)
    latency: dict[str, dict[str, Any]] = {}
    graph_bytes: dict[str, int] = {}
    degraded: list[str] = []
    for g in manifest.graphs:
        sess = open_runner("cpu", GraphSource(bundle, manifest, g), cfg.latency_threads)
        feeds = inputs.feeds(g, 1)
        stats = latency_stats(time_calls(lambda: sess.run(feeds), cfg.latency_warmup, cfg.latency_runs))
        latency.setdefault(g.precision, {})[g.pattern] = {k: stats[k] for k in ("n", "p50_ms", "p90_ms", "mean_ms")}
        graph_bytes[g.precision] = graph_bytes.get(g.precision, 0) + (bundle / g.file).stat().st_size
        if g.degraded:
            degraded.append(f"{g.precision}/{g.pattern}")
    total = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
    return {"method": method, "seed": seed, "bundle": str(bundle), "bundle_bytes": total, "graph_bytes": graph_bytes,
            "latency_batch1": latency, "degraded": degraded, "provider": "cpu (onnxruntime CPUExecutionProvider)",
            "settings": {"runs": cfg.latency_runs, "warmup": cfg.latency_warmup, "threads": cfg.latency_threads,
                         "inputs": "deterministic synthetic raw samples through the bundle's preprocessing"},
            "machine": machine_record(cfg.latency_threads), "export_wall_time_s": round(export_s, 1)}


def run_compare(cfg: CompareConfig, dataset: MultimodalDataset | None = None) -> dict[str, Any]:
    """Train, evaluate, export and judge; writes and returns results.json's content (and the report)."""
    import torch

    methods = resolve_methods(cfg)
    cfg = dataclasses.replace(cfg, methods=methods)
    if cfg.lee and not 0 < cfg.eta < 1:
        raise ConfigError(f"--eta must be in (0, 1), got {cfg.eta}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    eff = settings(cfg)
    sig = signature(cfg, eff)
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    if dataset is None:
        from train.data.registry import load_dataset

        dataset = load_dataset(cfg.dataset, cfg.data_dir, limit=eff["limit"], seed=cfg.data_seed)
    out, udir = compare_dir(cfg), unimodal_dir(cfg)
    with folder_lock(out, f"`mmedge train {cfg.label}`"):
        results = _compare_runs(cfg, dataset, methods, eff, sig, started_at, t0, out, udir)
    if cfg.report is not None:
        from train.reporting.report import write_report

        write_report(cfg.runs_dir, cfg.report, extra=[out / RESULTS])
    return results


def _compare_runs(cfg: CompareConfig, dataset: MultimodalDataset, methods: list[str], eff: dict[str, Any],
                  sig: dict[str, Any], started_at: str, t0: float, out: Path, udir: Path) -> dict[str, Any]:
    """The runs, the Lee grids and the exports of one invocation, results.json saved after each (under the lock)."""
    unimodal = ensure_unimodal(cfg, dataset, udir, eff["unimodal_epochs"], eff["limit"])
    prev = _previous(out / RESULTS)
    prev_runs = {(r["method"], r["seed"]): r for r in prev.get("runs", []) if r.get("signature") == sig}
    # Runs this invocation does not ask for (another --methods / --seeds) are kept, not dropped (see save).
    # A bundle is reused only when it was exported from a run trained under the same settings; the latency
    # of methods this invocation leaves out (or does not export: --no-export) stays with their records.
    latency = {m: r for m, r in (prev.get("latency") or {}).items()
               if r.get("signature") == sig and Path(r.get("bundle", "")).is_dir()}
    metric = headline(dataset.task)
    runs: list[dict[str, Any]] = []
    total = len(methods) * len(cfg.seeds)

    def save() -> dict[str, Any]:
        # Wanted runs not reached yet keep their previous record, so an interruption loses nothing.
        done = {(r["method"], r["seed"]) for r in runs}
        every = runs + [r for k, r in prev_runs.items() if k not in done]
        results = summarise(cfg, dataset, every, eff, unimodal, started_at, time.perf_counter() - t0, [])
        results.update(extra_sections(cfg, dataset, every, unimodal, latency, sig))
        write_json_atomic(out / RESULTS, results)
        return results

    results: dict[str, Any] = {}
    for i, (method, seed) in enumerate(((m, s) for m in methods for s in cfg.seeds), 1):
        rdir = out / method / f"seed{seed}"
        rec = prev_runs.get((method, seed))
        if rec is not None and (rdir / "model.safetensors").is_file():
            print(f"[{cfg.label}] {i}/{total} {method} seed {seed}: reused from {out / RESULTS}", flush=True)
        else:
            print(f"[{cfg.label}] {i}/{total} {method} seed {seed}: training -> {rdir}", flush=True)
            rec = run_one(cfg, dataset, method, seed, rdir, udir, eff, None)
            rec["sweep_auc"] = sweep_auc(rec["sweep"]) if rec.get("sweep") else None
            rec["signature"] = sig
        if cfg.lee and (rec.get("lee") or {}).get("eta") != cfg.eta:
            print(f"[{cfg.label}] {i}/{total} {method} seed {seed}: Lee et al. grid at eta {cfg.eta}", flush=True)
            rec["lee"] = lee_for_run(cfg, dataset, method, seed, rdir, udir, eff)
        runs.append(rec)
        scores = ", ".join(f"{k} {v[metric]:.4f}" for k, v in rec["test_by_pattern"].items())
        print(f"[{cfg.label}] {dataset.name} {method} seed {seed}: {scores} (train {rec['wall_time_s']['train']:.0f} s)",
              flush=True)
        results = save()
        if cfg.export and seed == cfg.seeds[0] and method not in latency:
            print(f"[{cfg.label}] exporting {method} seed {seed} (fp32, int8) and timing each pattern at batch 1",
                  flush=True)
            latency[method] = {**export_and_time(cfg, dataset, method, rdir, out / method / "bundle", seed),
                               "signature": sig}
            results = save()
    return results


def lee_etas(runs: list[dict[str, Any]]) -> float | list[float] | None:
    """The eta of the runs' Lee grids: one number, a list when records disagree, None without a grid."""
    etas = sorted({r["lee"]["eta"] for r in runs if r.get("lee")})
    return None if not etas else etas[0] if len(etas) == 1 else etas


def extra_sections(cfg: CompareConfig, data: MultimodalDataset, runs: list[dict[str, Any]], unimodal: dict[str, Any],
                   latency: dict[str, Any], sig: dict[str, Any]) -> dict[str, Any]:
    """What the comparison adds to the ablation's summary: leaderboard, claims, latency, regime."""
    metric = headline(data.task)
    modalities = list(data.modality_names)
    full = Pattern(modalities).key
    missing = [p.key for p in all_patterns(modalities) if p.key != full]
    cdata, fractions = claims_input(runs, metric)
    same_labels = cfg.pretrain_task == "labels"
    # The unimodal ceiling: the encoder's own head (same labels), or its label probe (coarse pretraining).
    ceiling = {m: (u.get("test") if same_labels else (u.get("label_probe") or {}).get("test")) or {}
               for m, u in unimodal.items()}
    uni = {m: c[metric] for m, c in ceiling.items() if metric in c} or None
    return {"kind": cfg.label, "label": cfg.label, "pretrain_task": cfg.pretrain_task, "select": cfg.select,
            "signature": sig, "lee_eta": lee_etas(runs),
            "latency": dict(latency),
            "leaderboard": leaderboard(runs, latency, metric, [p.key for p in all_patterns(modalities)]),
            "claims": claim_verdicts(cdata, full, missing, fractions, uni)}
