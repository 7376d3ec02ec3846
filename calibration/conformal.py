"""Split conformal prediction sets (Mondrian over patterns) and abstention thresholds. numpy only.

One call of ``fit_section`` per (pattern, precision) graph, on that graph's logits over its
pattern's calibration samples, so the quantile is conditional on the pattern (Mondrian). The
score is LAC (runtime.confidence explains the choice); the section stores every sorted score
and n, so the runtime serves any alpha in (0, 1), not just the export's default.

Abstention: the smallest confidence threshold whose selective accuracy (accuracy over the
samples kept, confidence >= threshold) on the calibration samples reaches the target, i.e.
the largest coverage meeting it. Fitted on the same samples as T, so it is an estimate,
not a guarantee; the note reports it on the test split.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from calibration.temperature import calibrated, fit_report
from runtime.confidence import DEFAULT_ALPHA, confidence_of, conformal_quantile, samples_needed

SCORE = "lac"
ALPHA_GRID = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3)  # quantiles shown in reports; any alpha works at load


def lac_scores(probs: np.ndarray, labels: np.ndarray, multi_label: bool = False) -> np.ndarray:
    """1 - p_true (single-label); 1 - min p over the true labels, 0 without any (multi-label)."""
    p = np.asarray(probs, np.float64)
    if multi_label:
        y = np.asarray(labels) >= 0.5
        return 1.0 - np.where(y, p, np.inf).min(axis=1).clip(max=1.0)
    return 1.0 - p[np.arange(len(p)), np.asarray(labels, np.int64)]


def prediction_sets(probs: np.ndarray, quantile: float) -> np.ndarray:
    """(N, L) bool membership: p >= 1 - q, the runtime's rule (every label when q is inf)."""
    p = np.asarray(probs, np.float64)
    return np.ones(p.shape, bool) if math.isinf(quantile) else p >= 1.0 - quantile


def covered(sets: np.ndarray, labels: np.ndarray, multi_label: bool = False) -> np.ndarray:
    """Per row: the set holds the true label (multi-label: every true label)."""
    if multi_label:
        y = np.asarray(labels) >= 0.5
        return ~(y & ~sets).any(axis=1)
    return sets[np.arange(len(sets)), np.asarray(labels, np.int64)]


def select_threshold(confidence: np.ndarray, correct: np.ndarray, target: float) -> dict[str, Any]:
    """Lowest threshold on ``confidence`` with selective accuracy >= ``target`` (max coverage)."""
    conf, hit = np.asarray(confidence, np.float64), np.asarray(correct, np.float64)
    order = np.argsort(-conf, kind="stable")
    c, h = conf[order], hit[order]
    kept = np.arange(1, len(c) + 1)
    acc = np.cumsum(h) / kept
    # a threshold keeps every row with confidence >= it, so only cut after the last of a run of ties
    last_of_tie = np.append(c[1:] < c[:-1], True)
    ok = np.flatnonzero((acc >= target) & last_of_tie)
    if len(ok) == 0:
        return {"target_accuracy": target, "threshold": None, "coverage": 0.0, "selective_accuracy": None,
                "reachable": False}
    i = ok[-1]
    return {"target_accuracy": target, "threshold": float(c[i]), "coverage": float(kept[i] / len(c)),
            "selective_accuracy": float(acc[i]), "reachable": True}


def fit_section(logits: np.ndarray, labels: np.ndarray, *, multi_label: bool = False, alpha: float = DEFAULT_ALPHA,
                target_accuracy: float | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(manifest section, full report) of one graph from its calibration logits and labels."""
    fit = fit_report(logits, labels, multi_label)
    t = fit["temperature"]
    probs = calibrated(logits, t, multi_label)
    scores = np.sort(lac_scores(probs, labels, multi_label))
    n = len(scores)
    warnings = []
    if n < samples_needed(alpha):
        warnings.append(f"{n} calibration samples; alpha={alpha:g} needs >= {samples_needed(alpha)} for a finite "
                        "conformal quantile: prediction sets are every label")
    if fit["temperature_at_search_edge"]:
        warnings.append(f"fitted temperature {t:.4g} is at the edge of the search range")
    abstain = None
    if target_accuracy is not None:
        pred_ok = ((probs >= 0.5) == (np.asarray(labels) >= 0.5)).all(axis=1) if multi_label else \
            probs.argmax(axis=1) == np.asarray(labels)
        abstain = select_threshold(confidence_of(probs, multi_label), pred_ok, target_accuracy)
        if not abstain["reachable"]:
            warnings.append(f"target selective accuracy {target_accuracy:g} is unreachable on the calibration "
                            "samples: this pattern abstains on every input")
    q = conformal_quantile(scores, alpha)
    section = {"temperature": t, "task": "multi-label" if multi_label else "single-label", "score": SCORE,
               "alpha": alpha, "n": n, "scores": [float(s) for s in scores], "quantile": None if math.isinf(q) else q,
               "abstain": abstain, "metrics": {"before": fit["before"], "after": fit["after"]},
               "warnings": warnings}
    report = {**{k: v for k, v in section.items() if k != "scores"},
              "quantiles": {str(a): _finite_or_none(conformal_quantile(scores, a)) for a in ALPHA_GRID},
              "calibration_coverage": float(covered(prediction_sets(probs, q), labels, multi_label).mean()),
              "temperature_at_search_edge": fit["temperature_at_search_edge"]}
    return section, report


def _finite_or_none(x: float) -> float | None:
    return None if math.isinf(x) else x
