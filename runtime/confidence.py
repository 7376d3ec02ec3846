"""Per-pattern confidence at inference: temperature, conformal prediction sets, abstention.

A graph entry's optional ``confidence`` section (written by the exporter, fitted on that
graph's own outputs on validation samples withheld to its pattern) holds::

    {"temperature": 1.7,                       # > 0, finite; logits / T before softmax/sigmoid
     "task": "single-label",
     "score": "lac",                           # nonconformity score, see below
     "alpha": 0.1,                             # the export's default miscoverage level
     "n": 500, "scores": [...],                # sorted calibration scores (ascending): any alpha works
     "abstain": {"threshold": 0.93, ...} | null,
     "metrics": {"before": {...}, "after": {...}}, "warnings": [...]}

Scores (LAC, "least ambiguous set-valued classifier"): single-label ``1 - p_true``; the set is
every label with ``p >= 1 - q``. LAC gives the smallest sets on average among split-conformal
sets with the same coverage, which is what a device acting on the set wants; APS adapts set
size better to hard inputs but its sets are larger. Multi-label: ``1 - min p`` over the true
labels (0 for a sample without positives), so the same rule covers *all* true labels with
probability >= 1 - alpha.

Split conformal (Mondrian over patterns: one quantile per graph): with n calibration scores
the quantile is the k-th smallest, k = ceil((n + 1)(1 - alpha)). If k > n no finite quantile
gives the guarantee: the set is then every label and ``InsufficientCalibrationWarning`` is
raised once at load, instead of claiming coverage. An *empty* set is a valid LAC answer: no
label is plausible at 1 - alpha (it happens for about alpha - error rate of the inputs when the
pattern is more accurate than 1 - alpha); a host can treat it like an abstention.

``Prediction.probabilities`` stays the graph's own output; the runtime adds
``calibrated_probabilities`` and computes sets and abstention from those. numpy only.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.errors import BundleIntegrityError

DEFAULT_ALPHA = 0.1


class InsufficientCalibrationWarning(UserWarning):
    """A pattern has fewer calibration samples than ceil((n+1)(1-alpha)) needs: no coverage claim."""

    def __init__(self, message: str, *, pattern: str, n: int, alpha: float) -> None:
        self.pattern, self.n, self.alpha = pattern, n, alpha
        super().__init__(message)


def samples_needed(alpha: float) -> int:
    """Smallest n with ceil((n+1)(1-alpha)) <= n, i.e. a finite conformal quantile."""
    n = 1
    while math.ceil((n + 1) * (1 - alpha) - 1e-12) > n:
        n += 1
    return n


def conformal_quantile(sorted_scores: Sequence[float] | np.ndarray, alpha: float) -> float:
    """The split-conformal quantile of ascending ``sorted_scores`` at ``alpha``; inf if n is too small."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    n = len(sorted_scores)
    k = math.ceil((n + 1) * (1 - alpha) - 1e-12)  # the epsilon: (n+1)(1-alpha) integral in exact arithmetic
    return math.inf if k > n else float(sorted_scores[k - 1])


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def apply_temperature(logits: np.ndarray, temperature: float, multi_label: bool) -> np.ndarray:
    """Calibrated probabilities, float32 like the graphs' own outputs (computed in float64)."""
    z = np.asarray(logits, np.float64) / temperature
    with np.errstate(over="ignore"):
        return (sigmoid(z) if multi_label else softmax(z)).astype(np.float32)


# One row of at most this many labels is calibrated in Python floats: at batch 1 each numpy call costs
# more than the arithmetic (10-25 us on a loaded CPU against ~1 us per label here). Same float64
# arithmetic as apply_temperature; the result differs from it by at most one float32 rounding.
_PY_ROW_UP_TO = 64


def _row_temperature(logits: list[float], temperature: float, multi_label: bool) -> list[float]:
    z = [v / temperature for v in logits]
    if multi_label:  # the stable sigmoid: exp of a non-positive number only
        return [1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v)) for v in z]
    top = max(z)
    e = [math.exp(v - top) for v in z]
    total = math.fsum(e)
    return [v / total for v in e]


def confidence_of(probs: np.ndarray, multi_label: bool) -> np.ndarray:
    """Per-row confidence the abstention threshold applies to: top-1 probability (single-label), the
    least certain label decision max(p, 1-p) (multi-label)."""
    return np.maximum(probs, 1 - probs).min(axis=-1) if multi_label else probs.max(axis=-1)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_section(section: Any, pattern: str) -> None:
    """Refuse a malformed ``confidence`` section (a missing, non-finite or non-positive T above all)."""
    if not isinstance(section, dict):
        raise BundleIntegrityError(f"graph {pattern!r}: confidence section is {type(section).__name__}, not an "
                                   "object; re-export the bundle", pattern=pattern)
    t = section.get("temperature")
    if not _finite(t) or t <= 0:
        raise BundleIntegrityError(f"graph {pattern!r}: confidence temperature is {t!r}; it must be a finite "
                                   "number > 0. The manifest was hand-edited or written by a broken export: "
                                   "re-export the bundle", pattern=pattern)
    scores = section.get("scores", [])
    if (not isinstance(scores, list) or not all(_finite(s) for s in scores) or section.get("n") != len(scores)
            or any(b < a for a, b in zip(scores, scores[1:]))):
        raise BundleIntegrityError(f"graph {pattern!r}: confidence scores must be an ascending list of "
                                   f"n={section.get('n')!r} finite numbers; re-export the bundle", pattern=pattern)
    abstain = section.get("abstain")
    if abstain is not None and not (isinstance(abstain, dict) and (abstain.get("threshold") is None
                                                                    or _finite(abstain.get("threshold")))):
        raise BundleIntegrityError(f"graph {pattern!r}: abstain threshold {abstain!r} is not a finite number or "
                                   "null; re-export the bundle", pattern=pattern)


@dataclass(frozen=True)
class Confidence:
    """One graph's calibration, ready to apply: immutable, so safe across threads."""

    pattern: str
    temperature: float
    multi_label: bool
    alpha: float
    n: int
    quantile: float  # inf: too few calibration samples for alpha, every label is in the set
    abstain_threshold: float | None  # None: no abstention configured
    abstain_always: bool  # the target accuracy was unreachable on the calibration samples

    @classmethod
    def from_section(cls, section: dict[str, Any], pattern: str, multi_label: bool,
                     alpha: float | None = None) -> "Confidence":
        check_section(section, pattern)
        a = float(section.get("alpha", DEFAULT_ALPHA) if alpha is None else alpha)
        scores = section.get("scores", [])
        q = conformal_quantile(scores, a)
        if math.isinf(q):
            warnings.warn(InsufficientCalibrationWarning(
                f"pattern {pattern!r}: {len(scores)} calibration samples, but alpha={a:g} needs at least "
                f"{samples_needed(a)}; its prediction sets are every label and claim no coverage. Use a larger "
                "alpha or re-export with more validation samples", pattern=pattern, n=len(scores), alpha=a),
                stacklevel=3)
        ab = section.get("abstain")
        thr = None if ab is None or ab.get("threshold") is None else float(ab["threshold"])
        return cls(pattern, float(section["temperature"]), multi_label, a, len(scores), q, thr,
                   ab is not None and ab.get("threshold") is None)

    def calibrate(self, logits: np.ndarray | None, probs: np.ndarray) -> np.ndarray:
        """Calibrated probabilities from the logits (or, for a graph without them, from log-probabilities:
        softmax(log p / T) == softmax(logits / T) since log p and the logits differ by a per-row constant)."""
        if logits is not None and logits.shape[0] == 1 and logits.shape[1] <= _PY_ROW_UP_TO:  # streaming
            row = logits[0].tolist()
            if all(math.isfinite(v) for v in row):  # else the numpy path (its overflow handling)
                return np.array([_row_temperature(row, self.temperature, self.multi_label)], np.float32)
        if logits is None:
            with np.errstate(divide="ignore"):
                p = np.asarray(probs, np.float64)
                logits = np.log(p) - np.log1p(-p) if self.multi_label else np.log(p)
        return apply_temperature(logits, self.temperature, self.multi_label)

    def annotate(self, preds: Sequence[Any], calibrated: np.ndarray, labels: Sequence[str]) -> None:
        """Fill calibrated_probabilities (rows of ``calibrated``), prediction_set, set_size, abstained."""
        cut = 1.0 - self.quantile  # label j is in the set iff calibrated p_j >= 1 - q (LAC)
        # Streaming (one row, few labels): Python floats; float32 p >= cut compares in float32, so cut too.
        one_row = len(preds) == 1 and calibrated.shape[1] <= _PY_ROW_UP_TO and math.isfinite(cut)
        cut32 = float(np.float32(cut))
        for i, pred in enumerate(preds):
            p = calibrated[i]  # a fresh array per call: rows share nothing with another call's result
            if one_row:
                row = p.tolist()
                members: Any = sorted((j for j, v in enumerate(row) if v >= cut32), key=row.__getitem__, reverse=True)
            else:
                members = np.flatnonzero(p >= cut) if math.isfinite(cut) else np.arange(len(labels))
                members = members[np.argsort(-p[members], kind="stable")]  # most probable first, ties in label order
            pred.calibrated_probabilities = p
            pred.prediction_set = [labels[j] for j in members]
            pred.set_size = len(members)
            if self.abstain_always:
                pred.abstained = True
            elif self.abstain_threshold is not None:
                pred.abstained = bool(confidence_of(p, self.multi_label) < self.abstain_threshold)


def summary(section: dict[str, Any] | None, alpha: float | None = None) -> dict[str, Any] | None:
    """What ``mmedge runtime info`` shows of one graph's section (None without calibration)."""
    if section is None:
        return None
    a = float(section.get("alpha", DEFAULT_ALPHA) if alpha is None else alpha)
    metrics = section.get("metrics", {})
    ab = section.get("abstain") or {}
    return {"temperature": section["temperature"], "alpha": a, "n": section.get("n"),
            "quantile": conformal_quantile(section.get("scores", []), a),
            "ece_before": metrics.get("before", {}).get("ece"), "ece_after": metrics.get("after", {}).get("ece"),
            "abstain_threshold": ab.get("threshold"), "target_accuracy": ab.get("target_accuracy"),
            "warnings": list(section.get("warnings", []))}


def confidence_table(graphs: Sequence[Any], alpha: float | None = None) -> str:
    """Per graph entry with a section: T, ECE and NLL before -> after (validation), q at alpha and n."""
    head = ("pattern", "precision", "T", "ECE before->after", "NLL before->after", "alpha", "q", "n", "abstain <")
    rows = [head]
    for g in graphs:
        s = summary(g.confidence, alpha)
        if s is None:
            continue
        m = g.confidence.get("metrics", {})
        b, a = m.get("before", {}), m.get("after", {})
        thr = s["abstain_threshold"]
        rows.append((g.pattern, g.precision, f"{s['temperature']:.3f}",
                     f"{b.get('ece', math.nan):.4f}->{a.get('ece', math.nan):.4f}",
                     f"{b.get('nll', math.nan):.4f}->{a.get('nll', math.nan):.4f}", f"{s['alpha']:g}",
                     "inf" if math.isinf(s["quantile"]) else f"{s['quantile']:.4f}", str(s["n"]),
                     "-" if s["target_accuracy"] is None else ("all" if thr is None else f"{thr:.4f}")))
    if len(rows) == 1:
        return "no confidence calibration in this bundle"
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
