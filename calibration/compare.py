"""Output-level comparison of a reduced-precision graph against its FP32 reference."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

# Outputs whose argmax is the prediction; others (embeddings) only get error numbers.
CLASS_OUTPUTS = ("logits", "probabilities")


@dataclass(frozen=True)
class Tolerance:
    """max_rel: max |got - ref| / max|ref| per float output (None = not checked);
    min_top1: top-1 agreement on class outputs (None = not checked)."""
    max_rel: float | None = 1e-2
    min_top1: float | None = 0.99

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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

    def failures(self, tol: Tolerance) -> list[str]:
        """One line per failing (output, metric), with the numbers."""
        lines: list[str] = []
        for e in self.outputs.values():
            if e.nonfinite:
                lines.append(f"{e.name}: {e.nonfinite} non-finite values (FP32 had none)")
            if tol.max_rel is not None and e.rel > tol.max_rel:
                lines.append(f"{e.name}: relative max error {e.rel:.3g} > {tol.max_rel:.3g} "
                             f"(max abs {e.max_abs:.3g})")
            if tol.min_top1 is not None and e.top1_agreement is not None and e.top1_agreement < tol.min_top1:
                lines.append(f"{e.name}: top-1 agreement {e.top1_agreement:.4f} < {tol.min_top1:.4f} "
                             f"over {self.samples} samples")
        return lines

    def passes(self, tol: Tolerance) -> bool:
        return not self.failures(tol)

    def score(self) -> float:
        """A scalar for the greedy search: worst relative error, non-finite counts as infinite."""
        if any(e.nonfinite for e in self.outputs.values()):
            return float("inf")
        return max((e.rel + (1.0 - (e.top1_agreement if e.top1_agreement is not None else 1.0))
                    for e in self.outputs.values()), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        return {"samples": self.samples, "outputs": {k: asdict(v) for k, v in self.outputs.items()}}


def _class_outputs(names: Sequence[str], ref: Mapping[str, np.ndarray]) -> set[str]:
    named = {n for n in names if n in CLASS_OUTPUTS}
    if named:
        return named
    two_d = [n for n in names if ref[n].ndim == 2 and ref[n].shape[1] > 1]
    return set(two_d[:1])


def compare(ref: Sequence[Mapping[str, np.ndarray]], got: Sequence[Mapping[str, np.ndarray]]) -> Comparison:
    """Concatenate each float output over the feeds and compare (the batch axis is axis 0)."""
    if len(ref) != len(got) or not ref:
        raise ValueError(f"compare needs matching, non-empty runs (got {len(ref)} vs {len(got)})")
    names = [n for n in ref[0] if np.issubdtype(np.asarray(ref[0][n]).dtype, np.floating)]
    r = {n: np.concatenate([np.asarray(x[n], np.float64).reshape(len(x[n]), -1) for x in ref]) for n in names}
    g = {n: np.concatenate([np.asarray(x[n], np.float64).reshape(len(x[n]), -1) for x in got]) for n in names}
    classes = _class_outputs(names, r)
    out = Comparison(samples=int(r[names[0]].shape[0]) if names else 0)
    for n in names:
        finite = np.isfinite(g[n])
        bad = int((~finite & np.isfinite(r[n])).sum())
        diff = np.abs(np.where(finite, g[n], 0.0) - r[n])
        max_abs = float(diff.max()) if diff.size else 0.0
        scale = float(np.abs(r[n]).max()) if r[n].size else 0.0
        top1 = float((g[n].argmax(1) == r[n].argmax(1)).mean()) if n in classes and r[n].size else None
        out.outputs[n] = OutputError(n, max_abs, max_abs / max(scale, 1e-12), top1, bad)
    return out
