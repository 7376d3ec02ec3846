"""CPU INT8: build both uint8-activation candidates of a graph, measure them, keep one.

Candidates (both multiply uint8 activations by int8 weights, the pair onnxruntime's x86
VNNI/AMX kernels run fast):
- ``qdq-u8s8``: static QDQ, per-channel weights, calibrated on the pattern's train rows;
- ``dynamic-u8s8``: dynamic quantization (activation ranges per call), no calibration.

The choice: the fastest candidate whose agreement with FP32 passes ``tolerance`` (on the
calibration feeds; the build's held-out parity still checks the result); if none passes, the
most accurate one (the build's parity then reports it). Latency is the median at batch 1 and
one thread, candidates and FP32 alternated round by round in this process, so a machine that
slows down mid-measurement slows all of them. The report records every candidate and why.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from calibration.compare import Tolerance
from calibration.int8 import INT8_TOLERANCE, Int8Report, Method, quantize_dynamic_int8, quantize_int8
from calibration.ranges import Feed, make_session

CPU_FORMS = ("qdq-u8s8", "dynamic-u8s8")


def _rows(feeds: Sequence[Feed], n: int) -> list[dict[str, np.ndarray]]:
    """Up to ``n`` single-row feeds (batch 1 is what a device runs)."""
    out = []
    for feed in feeds:
        rows = len(next(iter(feed.values())))
        for i in range(rows):
            out.append({k: np.ascontiguousarray(v[i:i + 1]) for k, v in feed.items()})
            if len(out) >= n:
                return out
    return out


def paired_p50_ms(paths: dict[str, Path], feeds: Sequence[Feed], rounds: int = 15) -> dict[str, float]:
    """Median ms per batch-1 run of each graph, alternated round by round (one thread each)."""
    sessions = {k: make_session(p, threads=1) for k, p in paths.items()}
    rows = _rows(feeds, 4)
    times: dict[str, list[float]] = {k: [] for k in paths}
    for sess in sessions.values():  # warm-up
        sess.run(None, rows[0])
    for _ in range(rounds):
        for k, sess in sessions.items():
            t0 = time.perf_counter()
            for row in rows:
                sess.run(None, row)
            times[k].append((time.perf_counter() - t0) * 1e3 / len(rows))
    return {k: float(np.median(v)) for k, v in times.items()}


def choose_cpu_int8(fp32_path: str | Path, out_path: str | Path, feeds: Sequence[Feed], *,
                    method: Method = "minmax", tolerance: Tolerance = INT8_TOLERANCE,
                    forms: Sequence[str] = CPU_FORMS, rounds: int = 15) -> Int8Report:
    """Write the chosen CPU INT8 form of ``fp32_path`` to ``out_path``; the report says why."""
    unknown = sorted(set(forms) - set(CPU_FORMS))
    if unknown or not forms:
        raise ValueError(f"unknown CPU INT8 form(s) {unknown or list(forms)}; choose from {list(CPU_FORMS)}")
    out_path = Path(out_path)
    with tempfile.TemporaryDirectory(prefix="mmedge-int8cpu-") as tmp:
        reports: dict[str, Int8Report] = {}
        paths: dict[str, Path] = {"fp32": Path(fp32_path)}
        unbuilt: dict[str, str] = {}  # form -> why onnxruntime's quantizer refused it
        for form in forms:
            path = Path(tmp) / f"{form}.onnx"
            try:
                if form == "qdq-u8s8":
                    reports[form] = quantize_int8(fp32_path, path, feeds, method=method, form="u8s8",
                                                  tolerance=tolerance)
                else:
                    reports[form] = quantize_dynamic_int8(fp32_path, path, feeds, tolerance=tolerance)
            except ValueError as exc:  # e.g. a tensor constant over the calibration rows: no valid scale
                unbuilt[form] = f"{type(exc).__name__}: {exc}"
                continue
            paths[form] = path
        forms = [f for f in forms if f in reports]
        if not forms:
            raise ValueError(f"no CPU INT8 form of {fp32_path} could be built: {unbuilt}")
        p50 = paired_p50_ms(paths, feeds, rounds)
        passing = [f for f in forms if reports[f].passed]
        if passing:
            chosen = min(passing, key=lambda f: p50[f])
            others = {f: p50[f] for f in passing if f != chosen}
            why = (f"fastest within tolerance: {p50[chosen]:.3f} ms against "
                   + ", ".join(f"{f} {ms:.3f} ms" for f, ms in others.items()) if others
                   else f"the only candidate within tolerance; failing: "
                   + "; ".join(f"{f}: {', '.join(reports[f].agreement.failures(tolerance))}"
                               for f in forms if f != chosen))
        else:
            chosen = min(forms, key=lambda f: reports[f].agreement.score())
            why = "no candidate within tolerance on the calibration rows; kept the most accurate"
        shutil.copyfile(paths[chosen], out_path)
    report = reports[chosen]
    candidates: dict[str, Any] = {
        f: {"p50_ms": round(p50[f], 4), "ratio_to_fp32": round(p50[f] / p50["fp32"], 4), "passed": reports[f].passed,
            "agreement": reports[f].agreement.to_dict(reports[f].tolerance)} for f in forms}
    candidates.update({f: {"error": why_not} for f, why_not in unbuilt.items()})
    report.choice = {"chosen": chosen, "why": why, "fp32_p50_ms": round(p50["fp32"], 4), "candidates": candidates,
                     "timing": f"batch 1, 1 thread, median of {rounds} alternated rounds"}
    report.sizes["int8_bytes"] = out_path.stat().st_size
    return report
