"""The one comparison of a graph's outputs against a reference, and the one tolerance type.

Calibration compares an FP16/INT8 graph with its FP32 graph on calibration rows; export's
parity (export/validate.py) compares every exported graph with its PyTorch branch on held-out
rows with labels. Both call ``compare`` and judge the result with a ``Tolerance``.

Numbers (float outputs; batch axis 0, each row flattened):
- per output: ``max_abs`` = max |got - ref|; ``rel`` = max_abs / max |ref| (relative to the
  output's scale: an element-wise ratio explodes on logits near zero); ``nonfinite`` = NaN/Inf
  in ``got`` where ``ref`` is finite; ``top1_agreement`` for class outputs;
- the prediction output (``probabilities``, else ``logits``, else the first 2-D output with more
  than one column): ``top1_agreement`` over all rows, and over the rows whose *reference* top-1
  margin is at least ``Tolerance.top1_margin`` (``confident_*``). The margin is the gap between
  the reference's two highest softmax probabilities (multi-label: |p - 0.5| per label). A
  probability gap, not a logit gap, because it is bounded in [0, 1] and reads the same for every
  model and class count; rows under it are near ties whose top-1 flips on rounding noise alone;
- ``cosine_min`` / ``cosine_mean``: row-wise cosine of the embedding output (``fused_embedding``);
- with labels: ``metric_ref`` / ``metric_got`` / ``metric_delta`` (got - ref) of the task metric
  (accuracy; multi-label: label-wise accuracy at 0.5).

A failure names the check, the number, the limit and the tolerance that would have passed
(Polygraphy's CompareFunc.simple reports the same).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

# Outputs whose argmax is the prediction, in order of preference; others only get error numbers.
CLASS_OUTPUTS = ("probabilities", "logits")
EMBEDDING_OUTPUT = "fused_embedding"
Outputs = Mapping[str, np.ndarray]
Limit = float | Mapping[str, float] | None  # one limit for every output, or per output ("" = the default)


@dataclass(frozen=True)
class Tolerance:
    """What a compared graph must meet; ``None`` = not checked.

    ``max_abs`` / ``max_rel`` take one number for every float output or a mapping output name ->
    limit, where the key ``""`` is the default for outputs not named (outputs neither named nor
    defaulted are not checked). ``min_top1`` applies to the rows whose reference margin is
    >= ``top1_margin`` (0: every row). ``max_metric_drop`` bounds metric_ref - metric_got (a
    fraction: 0.01 = one point), checked only when labels were given.
    """
    max_abs: Limit = None
    max_rel: Limit = None
    min_top1: float | None = None
    top1_margin: float = 0.0
    min_cosine: float | None = None
    max_metric_drop: float | None = None

    def limit(self, check: str, output: str) -> float | None:
        value = getattr(self, check)
        if isinstance(value, Mapping):
            return value.get(output, value.get(""))
        return value

    def to_dict(self) -> dict[str, Any]:
        return {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in asdict(self).items()}


# Export parity: each graph against its PyTorch branch, on held-out rows.
PARITY_TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(max_abs={"logits": 1e-4}),
    "fp16": Tolerance(min_top1=0.99),
    # INT8 accepts on the task metric (<= 1 point lost) plus top-1 agreement on confident rows:
    # near-tied rows of an under-trained model flip on quantization noise without being wrong.
    "int8": Tolerance(min_top1=0.97, top1_margin=0.05, max_metric_drop=0.01),
}
# Calibration: the reduced graph against its FP32 graph, on calibration rows (no labels).
FP16_TOLERANCE = Tolerance(max_rel=1e-2, min_top1=0.99)
INT8_TOLERANCE = Tolerance(min_top1=0.95, top1_margin=0.05)


def _round_away(x: float, up: bool) -> float:
    """``x`` to 3 significant digits, rounded up (or down): a limit that certainly passes."""
    if x == 0 or not math.isfinite(x):
        return x
    scale = 10 ** (math.floor(math.log10(abs(x))) - 2)
    return (math.ceil(x / scale) if up else math.floor(x / scale)) * scale


@dataclass(frozen=True)
class Failure:
    output: str
    check: str  # max_abs | max_rel | nonfinite | min_top1 | min_cosine | max_metric_drop
    value: float
    limit: float
    detail: str = ""
    pattern: str | None = None
    precision: str | None = None

    def passing(self) -> str:
        """The tolerance setting that would have passed this check."""
        if self.check == "nonfinite":
            return "no tolerance passes non-finite outputs"
        if self.check == "max_metric_drop":
            return f"passes with max_metric_drop={_round_away(-self.value, True):g}"
        return f"passes with {self.check}={_round_away(self.value, self.check.startswith('max')):g}"

    def __str__(self) -> str:
        where = (f"pattern {self.pattern} " if self.pattern else "") + (f"[{self.precision}] " if self.precision else "")
        names = {"max_abs": "max_abs", "max_rel": "max_rel", "min_top1": "top1_agreement", "min_cosine": "cosine_min",
                 "max_metric_drop": "metric_delta", "nonfinite": "nonfinite"}
        op = ">=" if self.check.startswith("min") else "<="
        limit = -self.limit if self.check == "max_metric_drop" else self.limit
        if self.check == "max_metric_drop":
            op = ">="
        detail = f" {self.detail}" if self.detail else ""
        return (f"{where}output {self.output!r}: {names[self.check]} = {self.value:.6g}, needs {op} {limit:g}"
                f"{detail} ({self.passing()})")


@dataclass
class OutputError:
    name: str
    max_abs: float
    rel: float
    top1_agreement: float | None = None
    nonfinite: int = 0


@dataclass
class Comparison:
    outputs: dict[str, OutputError] = field(default_factory=dict)
    samples: int = 0
    prediction: str | None = None  # the class output the agreement numbers are about
    top1_agreement: float | None = None
    cosine_min: float | None = None
    cosine_mean: float | None = None
    metric_ref: float | None = None
    metric_got: float | None = None
    metric_delta: float | None = None
    # per row (multi-label: per row and label): reference margin, and whether got's prediction agrees
    margins: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    agrees: np.ndarray = field(default_factory=lambda: np.zeros(0, bool), repr=False)

    def confident(self, margin: float) -> tuple[int, float | None]:
        """(rows with reference margin >= ``margin``, their top-1 agreement; None when there are none)."""
        keep = self.margins >= margin
        n = int(keep.sum())
        return n, (float(self.agrees[keep].mean()) if n else None)

    def failed(self, tol: Tolerance, *, pattern: str | None = None, precision: str | None = None) -> list[Failure]:
        """Every failing (output, check) with its numbers."""
        out: list[Failure] = []

        def fail(*args: Any, detail: str = "") -> None:
            out.append(Failure(*args, detail=detail, pattern=pattern, precision=precision))

        for e in self.outputs.values():
            if e.nonfinite:
                fail(e.name, "nonfinite", float(e.nonfinite), 0.0, detail="(NaN/Inf where the reference is finite)")
            for check, value in (("max_abs", e.max_abs), ("max_rel", e.rel)):
                limit = tol.limit(check, e.name)
                if limit is not None and not value <= limit:
                    fail(e.name, check, value, limit)
        if tol.min_top1 is not None and self.prediction is not None:
            n, agree = self.confident(tol.top1_margin)
            if agree is not None and not agree >= tol.min_top1:
                rows = (f"over {n} of {self.agrees.size} rows with reference margin >= {tol.top1_margin:g}"
                        if tol.top1_margin > 0 else f"over {n} rows")
                fail(self.prediction, "min_top1", agree, tol.min_top1, detail=rows)
        if tol.min_cosine is not None and self.cosine_min is not None and not self.cosine_min >= tol.min_cosine:
            fail(EMBEDDING_OUTPUT, "min_cosine", self.cosine_min, tol.min_cosine)
        if (tol.max_metric_drop is not None and self.metric_delta is not None
                and not self.metric_delta >= -tol.max_metric_drop):
            fail(self.prediction or "", "max_metric_drop", self.metric_delta, tol.max_metric_drop,
                 detail=f"(task metric {self.metric_got:.4f} vs reference {self.metric_ref:.4f})")
        return out

    def failures(self, tol: Tolerance) -> list[str]:
        """One line per failing (output, check), with the numbers and the tolerance that would pass."""
        return [str(f) for f in self.failed(tol)]

    def passes(self, tol: Tolerance) -> bool:
        return not self.failed(tol)

    def score(self) -> float:
        """A scalar for the greedy FP16 search: worst relative error plus disagreement; non-finite is infinite."""
        if any(e.nonfinite for e in self.outputs.values()):
            return float("inf")
        return max((e.rel + (1.0 - (e.top1_agreement if e.top1_agreement is not None else 1.0))
                    for e in self.outputs.values()), default=0.0)

    def to_dict(self, tol: Tolerance | None = None) -> dict[str, Any]:
        d: dict[str, Any] = {"samples": self.samples, "outputs": {k: asdict(v) for k, v in self.outputs.items()},
                             "prediction": self.prediction, "top1_agreement": self.top1_agreement,
                             "cosine_min": self.cosine_min, "cosine_mean": self.cosine_mean,
                             "metric_ref": self.metric_ref, "metric_got": self.metric_got,
                             "metric_delta": self.metric_delta}
        if tol is not None:
            n, agree = self.confident(tol.top1_margin)
            d.update(top1_margin=tol.top1_margin, confident_samples=n, confident_top1_agreement=agree)
        return d


def task_prediction(task: str, probs: np.ndarray) -> np.ndarray:
    return (probs >= 0.5) if task == "multi-label" else probs.argmax(axis=-1)


def task_metric(task: str, probs: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy (multi-label: label-wise accuracy at 0.5) of ``probs`` against the true labels."""
    pred = task_prediction(task, probs)
    if task == "multi-label":
        return float((pred == (labels >= 0.5)).mean())
    return float((pred == labels).mean())


def top1_margin(task: str, probs: np.ndarray) -> np.ndarray:
    """Per row: top-1 minus top-2 probability (multi-label: |p - 0.5| per row and label)."""
    if task == "multi-label":
        return np.abs(probs - 0.5)
    if probs.shape[-1] < 2:
        return np.ones(probs.shape[0])
    top2 = np.sort(probs, axis=-1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def _stack(runs: Outputs | Sequence[Outputs], names: Sequence[str]) -> dict[str, np.ndarray]:
    if isinstance(runs, Mapping):
        runs = [runs]
    return {n: np.concatenate([np.asarray(x[n], np.float64).reshape(len(x[n]), -1) for x in runs]) for n in names}


def _prediction_output(names: Sequence[str], ref: Mapping[str, np.ndarray]) -> str | None:
    for n in CLASS_OUTPUTS:
        if n in names:
            return n
    two_d = [n for n in names if ref[n].ndim == 2 and ref[n].shape[1] > 1]
    return two_d[0] if two_d else None


def compare(ref: Outputs | Sequence[Outputs], got: Outputs | Sequence[Outputs], *, task: str = "single-label",
            labels: np.ndarray | None = None) -> Comparison:
    """Compare ``got`` with ``ref``: one mapping of outputs each, or matching lists of per-batch outputs
    (concatenated over the batch axis). Float outputs of ``ref`` only; ``got`` must have each of them."""
    if not isinstance(ref, Mapping) and (isinstance(got, Mapping) or len(ref) != len(got) or not ref):
        raise ValueError(f"compare needs matching, non-empty runs (got {len(ref)} vs "
                         f"{1 if isinstance(got, Mapping) else len(got)})")
    first = ref if isinstance(ref, Mapping) else ref[0]
    names = [n for n in first if np.issubdtype(np.asarray(first[n]).dtype, np.floating)]
    r, g = _stack(ref, names), _stack(got, names)
    for n in names:
        if r[n].shape != g[n].shape:
            raise ValueError(f"output {n!r}: shape {g[n].shape} does not match the reference's {r[n].shape}")
    pred = _prediction_output(names, r)
    out = Comparison(samples=int(r[names[0]].shape[0]) if names else 0, prediction=pred)
    classes = {n for n in CLASS_OUTPUTS if n in names} or ({pred} if pred else set())
    for n in names:
        finite = np.isfinite(g[n])
        bad = int((~finite & np.isfinite(r[n])).sum())
        diff = np.abs(np.where(finite, g[n], 0.0) - r[n])
        max_abs = float(diff.max()) if diff.size else 0.0
        scale = float(np.abs(r[n]).max()) if r[n].size else 0.0
        top1 = float((g[n].argmax(1) == r[n].argmax(1)).mean()) if n in classes and r[n].size else None
        out.outputs[n] = OutputError(n, max_abs, max_abs / max(scale, 1e-12), top1, bad)
    if pred is not None and r[pred].size:
        # a class output that is not already probabilities is turned into them for the margin
        as_probs = (lambda x: x) if pred == "probabilities" else (
            (lambda x: 1 / (1 + np.exp(-x))) if task == "multi-label" else _softmax)
        p_ref, p_got = as_probs(r[pred]), as_probs(g[pred])
        out.agrees = np.asarray(task_prediction(task, p_ref) == task_prediction(task, p_got)).reshape(-1)
        out.margins = np.asarray(top1_margin(task, p_ref)).reshape(-1)
        out.top1_agreement = float(out.agrees.mean())
        if labels is not None:
            out.metric_ref, out.metric_got = task_metric(task, p_ref, labels), task_metric(task, p_got, labels)
            out.metric_delta = out.metric_got - out.metric_ref
    if EMBEDDING_OUTPUT in names and r[EMBEDDING_OUTPUT].size:
        e_r, e_g = r[EMBEDDING_OUTPUT], g[EMBEDDING_OUTPUT]
        cos = (e_r * e_g).sum(axis=1) / np.maximum(np.linalg.norm(e_r, axis=1) * np.linalg.norm(e_g, axis=1), 1e-12)
        out.cosine_min, out.cosine_mean = float(cos.min()), float(cos.mean())
    return out
