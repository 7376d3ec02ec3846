"""The demo's last act: stream the test set through the torch-free runtime while sensors misbehave.

Each sample, every sensor independently either delivers a fresh reading, drops out,
or delivers a reading older than the hub's staleness window (it then counts as
missing, as a fused perception stack would treat it). The runtime picks the graph of
whatever is left. Simulated time keeps it deterministic and independent of machine load.

The test set's samples are unrelated scenes, so one simulated step is longer than the
staleness window: a sensor that drops out or delivers a stale reading at one sample never
lends the hub its reading of the previous sample (a stale packet is older than that reading,
so the hub keeps the previous one; with a step inside the window, the previous scene's
reading would be fused with this scene's other sensors).
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from runtime.atomic import atomic_file
from runtime.errors import NoModalityAvailable
from runtime.session import Runtime
from train.data.types import Sample

STEP_S = 0.25  # simulated seconds between samples: longer than any max_age used here (see above)


def stream(bundle: Path, samples: Sequence[Sample], labels: Sequence[str], precision: str, *, seed: int = 0,
           drop: float = 0.25, stale: float = 0.1, max_age: float = 0.12,
           records: list[tuple[int, str, np.ndarray]] | None = None) -> dict[str, Any]:
    """Per-pattern accuracy and latency (ms, runtime-measured) of one precision over the stream.

    ``records``, when given, receives (sample index, pattern, probabilities) per prediction.
    """
    if not 0 < max_age < STEP_S:
        raise ValueError(f"max_age must be in (0, {STEP_S}) s, the simulated step between unrelated samples; "
                         f"got {max_age}")
    clock = [0.0]
    rt = Runtime.load(bundle, precision=precision, providers=["cpu"], intra_op_threads=1)
    hub = rt.sensor_hub(max_age=max_age, clock=lambda: clock[0])
    rng = np.random.default_rng(seed)  # same seed per precision: every precision sees the same stream
    by_pattern: dict[str, list[bool]] = defaultdict(list)
    latency: dict[str, list[float]] = defaultdict(list)
    confidence: dict[str, list[tuple[np.ndarray, int, Any]]] = defaultdict(list)
    events = {"fresh": 0, "dropped": 0, "stale": 0, "no_sensor_left": 0}
    for index, sample in enumerate(samples):
        clock[0] += STEP_S
        for name in rt.manifest.modalities:
            roll = rng.random()
            if name not in sample.inputs or roll < drop:
                hub.push(name, None)
                events["dropped"] += 1
            elif roll < drop + stale:
                hub.push(name, sample.inputs[name], timestamp=clock[0] - 3 * max_age)
                events["stale"] += 1
            else:
                hub.push(name, sample.inputs[name])
                events["fresh"] += 1
        try:
            pred = rt.predict_from(hub, now=clock[0])
        except NoModalityAvailable:  # every sensor out: the host would hold its last decision
            events["no_sensor_left"] += 1
            continue
        if records is not None:
            records.append((index, pred.pattern, np.asarray(pred.probabilities)))
        by_pattern[pred.pattern].append(pred.label == labels[int(sample.label)])  # type: ignore[arg-type]
        latency[pred.pattern].append(pred.timings["total_ms"])
        confidence[pred.pattern].append((pred.calibrated_probabilities if pred.calibrated_probabilities is not None
                                         else pred.probabilities, int(sample.label), pred))  # type: ignore[arg-type]
    return {
        "precision": precision, "events": events,
        "patterns": {
            key: {"accuracy": float(np.mean(hits)), "num_samples": len(hits),
                  "latency_ms": {q: float(np.percentile(latency[key], int(q[1:]))) for q in ("p50", "p90", "p99")},
                  "confidence": _confidence(confidence[key], labels)}
            for key, hits in sorted(by_pattern.items())
        },
        "overall_accuracy": float(np.mean([h for hits in by_pattern.values() for h in hits])),
    }


def _confidence(rows: Sequence[tuple[np.ndarray, int, Any]], labels: Sequence[str]) -> dict[str, Any]:
    """ECE (15 equal-mass bins) of the probabilities the runtime returned (calibrated when the bundle is),
    and the conformal sets' empirical coverage and mean size on the stream."""
    from calibration.temperature import ece

    probs, ys = np.stack([r[0] for r in rows]), np.array([r[1] for r in rows])
    preds = [r[2] for r in rows]
    out: dict[str, Any] = {"calibrated": preds[0].calibrated_probabilities is not None, "ece": ece(probs, ys)}
    if preds[0].calibrated_probabilities is not None:
        out["ece_raw"] = ece(np.stack([p.probabilities for p in preds]), ys)
    if preds[0].prediction_set is not None:
        out["coverage"] = float(np.mean([labels[y] in p.prediction_set for p, y in zip(preds, ys)]))
        out["mean_set_size"] = float(np.mean([p.set_size for p in preds]))
    if preds[0].abstained is not None:
        kept = [(p.label == labels[y]) for p, y in zip(preds, ys) if not p.abstained]
        out["abstain_coverage"] = len(kept) / len(preds)
        out["selective_accuracy"] = float(np.mean(kept)) if kept else None
    return out


def confidence_tables(results: Sequence[dict[str, Any]], alpha: float = 0.1) -> str:
    """Per pattern and precision: accuracy, ECE (raw -> calibrated), conformal coverage and mean set size."""
    patterns = sorted({k for r in results for k in r["patterns"]}, key=lambda k: (-k.count("+"), k))
    width = max(len("pattern"), *(len(p) for p in patterns))
    head = f"{'pattern':<{width}}" + "".join(f"  {r['precision']:>6} acc  {'ECE raw->cal':>13}  {'cover':>5}  {'set':>4}"
                                              for r in results)
    lines = [f"confidence on the stream (ECE: 15 equal-mass bins; sets at alpha={alpha:g}, target coverage "
             f"{1 - alpha:.0%})", head]
    for key in patterns:
        row = f"{key:<{width}}"
        for r in results:
            cell = r["patterns"].get(key)
            if cell is None:
                row += f"  {'-':>10}  {'-':>13}  {'-':>5}  {'-':>4}"
                continue
            c = cell["confidence"]
            e = f"{c['ece_raw']:.3f}->{c['ece']:.3f}" if c["calibrated"] else f"{c['ece']:.3f} (raw)"
            cov = f"{c['coverage']:.3f}" if "coverage" in c else "-"
            size = f"{c['mean_set_size']:.2f}" if "mean_set_size" in c else "-"
            row += f"  {cell['accuracy']:10.4f}  {e:>13}  {cov:>5}  {size:>4}"
        lines.append(row)
    return "\n".join(lines)


def stream_tables(results: Sequence[dict[str, Any]]) -> str:
    """Accuracy and p50/p90/p99 latency per pattern (rows) and precision (column groups)."""
    patterns = sorted({k for r in results for k in r["patterns"]}, key=lambda k: (-k.count("+"), k))
    width = max(len("pattern"), *(len(p) for p in patterns))
    head = f"{'pattern':<{width}}" + "".join(f"  {r['precision']:>6} acc  {'p50/p90/p99 ms':>17}  n" for r in results)
    lines = [head]
    for key in patterns:
        row = f"{key:<{width}}"
        for r in results:
            cell = r["patterns"].get(key)
            if cell is None:
                row += f"  {'-':>10}  {'-':>17}  -"
                continue
            lat = cell["latency_ms"]
            row += (f"  {cell['accuracy']:10.4f}  {lat['p50']:5.2f}/{lat['p90']:5.2f}/{lat['p99']:5.2f}"
                    f"  {cell['num_samples']}")
        lines.append(row)
    lines.append(f"{'overall':<{width}}" + "".join(f"  {r['overall_accuracy']:10.4f}  {'':>17}   " for r in results))
    return "\n".join(lines)


def plot_stream(results: Sequence[dict[str, Any]], path: Path) -> Path:
    """Grouped bars: accuracy per pattern for each precision."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    patterns = sorted({k for r in results for k in r["patterns"]}, key=lambda k: (-k.count("+"), k))
    x = np.arange(len(patterns))
    width = 0.8 / len(results)
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, r in enumerate(results):
        acc = [r["patterns"].get(k, {}).get("accuracy", np.nan) for k in patterns]
        ax.bar(x + i * width - 0.4 + width / 2, acc, width, label=r["precision"])
    ax.set_xticks(x, patterns)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy on the streamed test set")
    ax.set_title("av-digits through the runtime, sensors dropping out")
    ax.legend(loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, dpi=120)
    finally:
        plt.close(fig)
    return path
