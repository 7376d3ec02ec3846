"""What a benchmark runs on (machine record) and the cold start, measured in a fresh interpreter.

Hostname-free on purpose: the JSON gets shared. GPU facts come from nvidia-smi when it is on PATH.
"""
from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

def machine_record(threads: int) -> dict[str, Any]:
    import onnxruntime as ort

    rec: dict[str, Any] = {"cpu_model": None, "cpu_count": os.cpu_count(),
                           "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
                           "platform": platform.platform(), "python": platform.python_version(),
                           "numpy": np.__version__, "onnxruntime": ort.__version__,
                           "ort_available_providers": ort.get_available_providers(),
                           "threads": {"ort_intra_op": threads, "ort_inter_op": 1,
                                       "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}}
    try:
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        rec["cpu_model"] = m.group(1).strip() if m else None
    except OSError:
        rec["cpu_model"] = platform.processor() or None
    rec["gpu"] = None
    if shutil.which("nvidia-smi"):
        try:
            q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=20).stdout.strip().splitlines()
            head = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=20).stdout
            cuda = re.search(r"CUDA Version:\s*([\d.]+)", head)
            rec["gpu"] = {"gpus": [dict(zip(("name", "driver"), (s.strip() for s in line.split(",")))) for line in q],
                          "cuda": cuda.group(1) if cuda else None}
        except (OSError, subprocess.SubprocessError) as exc:
            rec["gpu"] = {"error": str(exc)}
    try:
        import tensorrt

        rec["tensorrt"] = tensorrt.__version__
    except ImportError:
        rec["tensorrt"] = None
    return rec



COLD_START = r"""
import json, resource, sys, time
t0 = time.perf_counter()
def hwm_mb():
    # VmHWM belongs to this process's own memory map; ru_maxrss survives exec on Linux and would
    # report the (forking) benchmark process's peak instead
    try:
        line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20 if sys.platform == "darwin" else 1024)
import runtime
bundle, threads = sys.argv[1], int(sys.argv[2])
note = "runtime.session.Runtime.load (default: eager runners with warm-up) + predict"
from runtime.session import Runtime
t1 = time.perf_counter()
rt = Runtime.load(bundle, precision="fp32", providers=["cpu"], intra_op_threads=threads)
t2 = time.perf_counter()
from runtime.bench_inputs import synthetic_raw  # benchmark helper: excluded from the total, like the sample
sample = {m: synthetic_raw(e.preprocess) for m, e in rt.manifest.modalities.items()}
t_sample = time.perf_counter()
rt.predict(sample)
t3 = time.perf_counter()
def pss_mb():
    # proportional set size: pages shared with other processes (a mapped weights file) count in part
    try:
        line = next(l for l in open("/proc/self/smaps_rollup") if l.startswith("Pss:"))
        return int(line.split()[1]) / 1024
    except (OSError, StopIteration):
        return None
print("COLD:" + json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_predict_s": t3 - t_sample,
      "total_s": (t3 - t0) - (t_sample - t2), "peak_rss_mb": hwm_mb(), "pss_mb": pss_mb(),
      "path": note}))
"""


def cold_start(bundle: Path, threads: int = 1) -> dict[str, Any]:
    """import runtime + load the bundle + first prediction (full pattern) in a fresh interpreter.

    ``total_s`` excludes building the synthetic sample; ``process_wall_s`` adds interpreter
    start-up, measured from the parent.
    """
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", COLD_START, str(Path(bundle).resolve()), str(threads)],
                         capture_output=True, text=True, timeout=300, env=env)
    wall = time.perf_counter() - t0
    line = next((l for l in out.stdout.splitlines() if l.startswith("COLD:")), None)
    if out.returncode != 0 or line is None:
        return {"error": (out.stderr or out.stdout).strip()[-2000:]}
    res = json.loads(line[5:])
    res["process_wall_s"] = wall
    return res




def bundle_record(manifest: Any, bundle: Path) -> dict[str, Any]:
    """What the export bought, read from the manifest: fused ops and INT8 type per graph, and per
    precision the bytes on disk (graphs + shared weights file) against the unique weight bytes."""
    per: dict[str, Any] = {}
    weights = {w.precision: w for w in getattr(manifest, "shared_weights", [])}
    recorded = manifest.extra.get("weights", {}) if isinstance(manifest.extra, dict) else {}
    for p in manifest.precisions:
        graphs = [g for g in manifest.graphs if g.precision == p]
        on_disk = sum(g.size_bytes for g in graphs) + (weights[p].size_bytes if p in weights else 0)
        unique = recorded.get(p, {}).get("unique_weight_bytes")
        per[p] = {"bundle_bytes": on_disk, "unique_weight_bytes": unique,
                  "bytes_over_unique": round(on_disk / unique, 4) if unique else None,
                  "shared_weights_file": weights[p].file if p in weights else None}
    return {"graphs": {f"{g.precision}/{g.pattern}": {"fused_ops": g.fused_ops, "int8_type": g.int8_type}
                       for g in manifest.graphs},
            "precisions": per, "excluded_patterns": list(getattr(manifest, "excluded_patterns", []))}
