"""``mmedge bench``'s torch_speedup: eager PyTorch against onnxruntime FP32, the same branch.

Registered as the ``mmedge.bench`` entry point ``torch_speedup`` (pyproject.toml), so the
torch-free runtime benchmark can call it when the training extras are installed without
importing torch or train itself. Batch 1, CPU, ``cfg.threads`` threads for both, timed
alternately so that load from other processes hits both sides alike.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from runtime.bench import TARGETS, BenchConfig, latency_stats, open_runner, time_interleaved
from runtime.bench_inputs import Inputs
from runtime.manifest import Manifest
from runtime.patterns import Pattern
from runtime.runners import GraphSource


def measure(manifest: Manifest, inputs: Inputs, cfg: BenchConfig) -> dict[str, Any]:
    import torch

    from train.runs import load_run

    try:
        model = load_run(Path(cfg.run_dir))
    except (FileNotFoundError, ValueError, KeyError) as exc:
        return {"skipped": f"cannot load run {cfg.run_dir}: {type(exc).__name__}: {exc}"}
    prev = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)  # match onnxruntime's intra-op threads
    entries = []
    try:
        for g in (g for g in manifest.graphs if g.precision == "fp32"):
            module = model.pattern_module(Pattern.from_key(g.pattern)).eval()
            feeds = inputs.feeds(g, 1)
            if list(module.input_names) != [s.name for s in g.inputs]:
                return {"skipped": f"run {cfg.run_dir} does not match the bundle: pattern {g.pattern} takes "
                                   f"{module.input_names}, the graph {[s.name for s in g.inputs]}"}
            args = tuple(torch.from_numpy(feeds[n]) for n in module.input_names)
            sess = open_runner("cpu", GraphSource(cfg.bundle, manifest, g), cfg.threads)
            with torch.inference_mode():
                t_torch, t_ort = time_interleaved([lambda: module(*args), lambda: sess.run(feeds)],
                                                  cfg.warmup, cfg.runs)
            st, so = latency_stats(t_torch), latency_stats(t_ort)
            speedup = st["p50_ms"] / so["p50_ms"]
            entries.append({"pattern": g.pattern, "torch": st, "ort": so, "ort_p50_ms": so["p50_ms"],
                            "speedup": speedup, "speedup_of_min": st["min_ms"] / so["min_ms"],
                            "met": speedup >= TARGETS["torch_speedup"]})
    finally:
        torch.set_num_threads(prev)
    return {"run": str(cfg.run_dir), "torch": torch.__version__, "threads": cfg.threads, "entries": entries,
            "met": all(e["met"] for e in entries)}
