"""Temperature scaling and the calibration metrics it is judged by. numpy only (+ matplotlib for plots).

- ``fit_temperature``: the one scalar T > 0 minimising the NLL of softmax(logits / T)
  (single-label) or the BCE of sigmoid(logits / T) over every (sample, label) (multi-label).
  Both losses are convex in 1/T, so a golden-section search over 1/T finds the optimum.
- ``ece``: expected calibration error over **15 equal-mass bins** (each bin holds the same
  number of predictions, +-1), sum_b (n_b / N) |accuracy_b - confidence_b|. Single-label bins the
  top-1 confidence against top-1 correctness; multi-label bins every label's probability against
  its 0/1 truth. Equal mass: equal-width bins leave most bins empty for a confident model.
- ``nll``, ``brier`` (sum over labels of (p - y)^2, averaged over samples; multi-label: averaged
  over labels too), ``accuracy`` (multi-label: label-wise at 0.5). Temperature never changes it.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from runtime.confidence import apply_temperature

ECE_BINS = 15
T_RANGE = (0.02, 50.0)  # search range of T; a fitted T at an edge is reported as such
_EPS = 1e-12


def _loss(logits: np.ndarray, labels: np.ndarray, beta: float, multi_label: bool) -> float:
    z = logits * beta
    if multi_label:  # BCE with logits, stable: log(1 + e^-|z|) + max(z, 0) - y z
        return float(np.mean(np.logaddexp(0.0, -np.abs(z)) + np.maximum(z, 0.0) - labels * z))
    zmax = z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z - zmax).sum(axis=1)) + zmax[:, 0]
    return float(np.mean(lse - z[np.arange(len(z)), labels]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, multi_label: bool = False, *,
                    iterations: int = 60) -> float:
    """T minimising NLL (softmax) or BCE (sigmoid) on ``logits`` (N, L) with ``labels`` ((N,) int or (N, L) 0/1)."""
    z = np.asarray(logits, np.float64)
    y = np.asarray(labels, np.float64 if multi_label else np.int64)
    if z.ndim != 2 or len(z) == 0 or len(y) != len(z):
        raise ValueError(f"need logits (N, L) with N >= 1 and N labels, got {z.shape} and {y.shape}")
    lo, hi = 1.0 / T_RANGE[1], 1.0 / T_RANGE[0]  # search over beta = 1/T, where the loss is convex
    g = (math.sqrt(5) - 1) / 2
    a, b = lo + (1 - g) * (hi - lo), lo + g * (hi - lo)
    fa, fb = _loss(z, y, a, multi_label), _loss(z, y, b, multi_label)
    for _ in range(iterations):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = lo + (1 - g) * (hi - lo)
            fa = _loss(z, y, a, multi_label)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = _loss(z, y, b, multi_label)
    return float(1.0 / ((lo + hi) / 2))


def _one_hot(labels: np.ndarray, num: int) -> np.ndarray:
    out = np.zeros((len(labels), num))
    out[np.arange(len(labels)), labels] = 1.0
    return out


def ece(probs: np.ndarray, labels: np.ndarray, multi_label: bool = False, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error over ``n_bins`` equal-mass bins (see the module docstring)."""
    p = np.asarray(probs, np.float64)
    if multi_label:
        conf, hit = p.ravel(), np.asarray(labels, np.float64).ravel()
    else:
        y = np.asarray(labels, np.int64)
        conf, hit = p.max(axis=1), (p.argmax(axis=1) == y).astype(np.float64)
    if conf.size == 0:
        return float("nan")
    order = np.argsort(conf, kind="stable")
    total = 0.0
    for idx in np.array_split(order, min(n_bins, conf.size)):
        total += len(idx) * abs(hit[idx].mean() - conf[idx].mean())
    return float(total / conf.size)


def nll(probs: np.ndarray, labels: np.ndarray, multi_label: bool = False) -> float:
    p = np.clip(np.asarray(probs, np.float64), _EPS, 1 - _EPS)
    if multi_label:
        y = np.asarray(labels, np.float64)
        return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    return float(-np.mean(np.log(p[np.arange(len(p)), np.asarray(labels, np.int64)])))


def brier(probs: np.ndarray, labels: np.ndarray, multi_label: bool = False) -> float:
    p = np.asarray(probs, np.float64)
    if multi_label:
        return float(np.mean((p - np.asarray(labels, np.float64)) ** 2))
    return float(np.mean(((p - _one_hot(np.asarray(labels, np.int64), p.shape[1])) ** 2).sum(axis=1)))


def accuracy(probs: np.ndarray, labels: np.ndarray, multi_label: bool = False) -> float:
    p = np.asarray(probs)
    if multi_label:
        return float(((p >= 0.5) == (np.asarray(labels) >= 0.5)).mean())
    return float((p.argmax(axis=1) == np.asarray(labels)).mean())


def metrics(probs: np.ndarray, labels: np.ndarray, multi_label: bool = False) -> dict[str, float]:
    return {"ece": ece(probs, labels, multi_label), "nll": nll(probs, labels, multi_label),
            "brier": brier(probs, labels, multi_label), "accuracy": accuracy(probs, labels, multi_label),
            "ece_bins": ECE_BINS, "ece_binning": "equal-mass"}


def calibrated(logits: np.ndarray, temperature: float, multi_label: bool = False) -> np.ndarray:
    """The runtime's own transform (runtime.confidence), so export and device compute the same numbers."""
    return apply_temperature(logits, temperature, multi_label)


def reliability_bins(probs: np.ndarray, labels: np.ndarray, multi_label: bool = False,
                     n_bins: int = ECE_BINS) -> list[tuple[float, float, int]]:
    """(mean confidence, accuracy, count) per equal-mass bin: what the reliability diagram draws."""
    p = np.asarray(probs, np.float64)
    if multi_label:
        conf, hit = p.ravel(), np.asarray(labels, np.float64).ravel()
    else:
        conf, hit = p.max(axis=1), (p.argmax(axis=1) == np.asarray(labels)).astype(np.float64)
    order = np.argsort(conf, kind="stable")
    return [(float(conf[i].mean()), float(hit[i].mean()), len(i))
            for i in np.array_split(order, min(n_bins, max(conf.size, 1))) if len(i)]


def reliability_diagram(before: np.ndarray, after: np.ndarray, labels: np.ndarray, path: Path, *, title: str,
                        multi_label: bool = False, temperature: float | None = None) -> Path:
    """PNG: accuracy against confidence per equal-mass bin, before and after temperature scaling."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfect calibration")
    for probs, name, style in ((before, "raw", "o-"), (after, f"T={temperature:.3g}" if temperature else "calibrated",
                                                         "s-")):
        pts = reliability_bins(probs, labels, multi_label)
        ax.plot([c for c, _, _ in pts], [a for _, a, _ in pts], style, ms=4,
                label=f"{name} (ECE {ece(probs, labels, multi_label):.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (mean per bin)")
    ax.set_ylabel("accuracy per bin")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=7)
    ax.grid(alpha=0.3)
    fig.text(0.99, 0.01, f"{ECE_BINS} equal-mass bins", ha="right", fontsize=6, color="0.4")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def fit_report(logits: np.ndarray, labels: np.ndarray, multi_label: bool = False) -> dict[str, Any]:
    """T plus metrics before (the graph's own probabilities) and after."""
    t = fit_temperature(logits, labels, multi_label)
    raw, cal = calibrated(logits, 1.0, multi_label), calibrated(logits, t, multi_label)
    at_edge = not (T_RANGE[0] * 1.01 < t < T_RANGE[1] / 1.01)
    return {"temperature": t, "temperature_at_search_edge": at_edge,
            "before": metrics(raw, labels, multi_label), "after": metrics(cal, labels, multi_label)}
