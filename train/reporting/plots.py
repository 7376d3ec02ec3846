"""PNG plots of the protocols: the missing-rate sweep (CMPT Fig. 2/3) and the Lee grid (Table 6).

Agg backend (no display on a server); every file is written to a temp name and renamed,
so a reader never sees half a PNG.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
from matplotlib.figure import Figure  # noqa: E402

from runtime.atomic import atomic_file  # noqa: E402

MARKERS = "osD^v<>phX*"


def save_figure(fig: Figure, path: Path, dpi: int = 120) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png", bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def plot_sweep(curves: Mapping[str, Mapping[str, Any]], path: Path, title: str | None = None) -> Path:
    """Missing-rate sweeps, {legend label: missing_rate_sweep result}, as one PNG.

    A result with an "sd" dict of curves (mean over seeds) gets a shaded +- sd band.

    One run: one axes, a line per direction (which modality stays at 100%). Several runs
    (methods, seeds): one panel per direction, a line per run, as in the paper's Fig. 3.
    """
    if not curves:
        raise ValueError("plot_sweep needs at least one sweep result")
    results = list(curves.values())
    first = results[0]
    dataset, metric = first["dataset"], first["metric"]
    directions = list(first["curves"])
    for label, r in curves.items():
        if r["metric"] != metric or list(r["curves"]) != directions:
            raise ValueError(f"sweep {label!r} ({r['metric']}, {list(r['curves'])}) does not match "
                             f"the first one ({metric}, {directions}); plot them separately")
    ylabel = f"{metric} on {dataset} test"
    if len(curves) == 1:
        fig, ax = plt.subplots(figsize=(6, 4.2))
        for k, d in enumerate(directions):
            ax.plot(first["fractions"], first["curves"][d], marker=MARKERS[k % len(MARKERS)], label=first["labels"][d])
            _band(ax, first, d)
        _style(ax, "% of the other modality available at test", ylabel)
        ax.legend(title="test availability", fontsize=9)
        fig.suptitle(title or f"{first.get('method', '')} on {dataset}: missing-rate sweep (trained on complete data)",
                     fontsize=11)
        return save_figure(fig, path)
    fig, axes = plt.subplots(1, len(directions), figsize=(5.2 * len(directions), 4.2), sharey=True, squeeze=False)
    for ax, d in zip(axes[0], directions):
        others = [m for m in first["modalities"] if m != d]
        for k, (label, r) in enumerate(curves.items()):
            ax.plot(r["fractions"], r["curves"][d], marker=MARKERS[k % len(MARKERS)], label=label)
            _band(ax, r, d)
        _style(ax, f"% of {' and '.join(others)} available ({d} at 100%)", ylabel if ax is axes[0][0] else None)
        ax.set_title(f"available: {d}, missing: {', '.join(others)}", fontsize=10)
    axes[0][-1].legend(fontsize=9)
    fig.suptitle(title or f"{dataset}: missing-rate sweep (trained on complete data)", fontsize=11)
    return save_figure(fig, path)


def _band(ax: Any, result: Mapping[str, Any], direction: str) -> None:
    """Mean +- sd over seeds, when the result carries an "sd" curve (aggregated ablation sweeps)."""
    sd = (result.get("sd") or {}).get(direction)
    if not sd or any(v is None for v in sd):
        return
    mean = result["curves"][direction]
    ax.fill_between(result["fractions"], [m - v for m, v in zip(mean, sd)], [m + v for m, v in zip(mean, sd)],
                    alpha=0.18, color=ax.get_lines()[-1].get_color(), linewidth=0)


def _style(ax: Any, xlabel: str, ylabel: str | None) -> None:
    ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.set_xlim(-3, 103)
    ax.set_xticks(range(0, 101, 10))
    ax.grid(alpha=0.3)


def plot_lee_grid(result: Mapping[str, Any], path: Path, title: str | None = None) -> Path:
    """The train x test grid of ``lee_grid`` as an annotated heatmap."""
    import numpy as np

    cases, desc = result["cases"], result["descriptions"]
    values = np.array([[result["grid"][t][c] for c in cases] for t in cases], dtype=float)
    fig, ax = plt.subplots(figsize=(1.9 * len(cases) + 2.6, 1.3 * len(cases) + 1.8))
    image = ax.imshow(values, cmap="viridis", aspect="auto")
    fig.colorbar(image, ax=ax, label=f"{result['metric']} on {result['dataset']} test")
    ticks = [f"{c}\n{desc[c]}" for c in cases]
    ax.set_xticks(range(len(cases)), ticks, fontsize=8)
    ax.set_yticks(range(len(cases)), ticks, fontsize=8)
    ax.set_xlabel("test-time case")
    ax.set_ylabel("train-time case")
    middle = (np.nanmin(values) + np.nanmax(values)) / 2
    for i in range(len(cases)):
        for j in range(len(cases)):
            # Dark text on the bright end of viridis, light text on the dark end.
            ax.text(j, i, f"{values[i, j]:.3f}", ha="center", va="center", fontsize=11,
                    color="black" if values[i, j] > middle else "white")
    eta = round(100 * result["eta"])
    ax.set_title(title or f"{result['method']} on {result['dataset']}: Lee et al. grid, eta = {eta}%", fontsize=11)
    return save_figure(fig, path)


def plot_pattern_bars(rows: list[Mapping[str, Any]], patterns: list[str], path: Path, metric: str,
                      title: str) -> Path:
    """Grouped bars: one group per availability pattern, one bar per method (mean, seed-sd error bar)."""
    import numpy as np

    if not rows:
        raise ValueError("plot_pattern_bars needs at least one leaderboard row")
    width = 0.8 / len(rows)
    x = np.arange(len(patterns))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(patterns) * max(1, len(rows)) / 2), 4.2))
    for k, row in enumerate(rows):
        means = [100 * (row["patterns"][p]["mean"] or 0.0) for p in patterns]
        sds = [100 * (row["patterns"][p]["sd"] or 0.0) for p in patterns]
        ax.bar(x - 0.4 + width * (k + 0.5), means, width, yerr=sds, capsize=2, label=row["method"])
    ax.set_xticks(x, list(patterns))
    ax.set_xlabel("modalities available at test")
    ax.set_ylabel(f"test {metric} (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=min(4, len(rows)))
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def plot_accuracy_latency(rows: list[Mapping[str, Any]], path: Path, metric: str, title: str,
                          precision: str = "fp32") -> Path:
    """One point per method and pattern: p50 batch-1 latency (x) against the test metric (y)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    plotted = 0
    for k, row in enumerate(rows):
        lat = (row.get("p50_ms") or {}).get(precision) or {}
        pts = [(lat[p], 100 * row["patterns"][p]["mean"]) for p in lat if p in row["patterns"]]
        if not pts:
            continue
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=MARKERS[k % len(MARKERS)], label=row["method"])
        for (xv, yv), p in zip(pts, [p for p in lat if p in row["patterns"]]):
            ax.annotate(p, (xv, yv), fontsize=7, xytext=(3, 3), textcoords="offset points")
        plotted += 1
    if not plotted:
        plt.close(fig)
        raise ValueError("no method has latency numbers (the export was skipped)")
    ax.set_xlabel(f"p50 latency at batch 1, {precision} onnxruntime CPU (ms)")
    ax.set_ylabel(f"test {metric} (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path)
