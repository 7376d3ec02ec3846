"""Parity of an exported graph with its PyTorch branch, on the same held-out real samples.

The numbers and the tolerance are calibration/compare.py's (one comparator for the whole
project); this module runs the graph and the branch and turns a comparison into a
``ParityResult`` per (pattern, precision). Default tolerances (``PARITY_TOLERANCES``): fp32
1e-4 absolute on logits; fp16 top-1 agreement >= 0.99; int8 the task metric within 1 point of
PyTorch's plus top-1 agreement >= 0.97 on the rows whose PyTorch top-1 probability leads the
runner-up by >= 0.05 (near ties flip on quantization noise without the model getting worse).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from calibration.compare import PARITY_TOLERANCES, Failure, Tolerance, compare, task_metric
from runtime.errors import MMEdgeError

Feed = Mapping[str, np.ndarray]
DEFAULT_TOLERANCES = PARITY_TOLERANCES
__all__ = ["DEFAULT_TOLERANCES", "Failure", "ParityError", "ParityResult", "Tolerance", "check_parity",
           "compare_outputs", "ort_session", "run_graph", "task_metric", "torch_outputs", "validate_graph"]


@dataclass
class ParityResult:
    pattern: str
    precision: str
    num_samples: int
    max_abs: dict[str, float]
    max_rel: dict[str, float]
    cosine_min: float
    cosine_mean: float
    top1_agreement: float
    metric_torch: float | None
    metric_ort: float | None
    metric_delta: float | None
    tolerance: dict[str, Any]
    # top-1 agreement on the rows whose PyTorch margin is >= tolerance["top1_margin"]
    confident_samples: int = 0
    confident_top1_agreement: float | None = None
    failures: list[Failure] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "failures"}
        d["failures"] = [str(f) for f in self.failures]
        d["passed"] = self.passed
        return d


class ParityError(MMEdgeError, ValueError):
    """Graphs that miss their tolerance; ``failures`` lists every (pattern, output, numbers)."""

    def __init__(self, failures: Sequence[Failure], hint: str = "") -> None:
        self.failures = list(failures)
        lines = "\n  ".join(str(f) for f in self.failures)
        super().__init__(f"{len(self.failures)} parity check(s) failed:\n  {lines}"
                         + (f"\n{hint}" if hint else ""))


def compare_outputs(pattern: str, precision: str, ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray], *,
                    task: str = "single-label", labels: np.ndarray | None = None,
                    tolerance: Tolerance | None = None) -> ParityResult:
    """Compare concatenated outputs (``ref``: torch, ``got``: the graph) and apply ``tolerance``."""
    tol = tolerance or PARITY_TOLERANCES.get(precision, Tolerance())
    try:
        c = compare(ref, got, task=task, labels=labels)
    except ValueError as exc:
        raise ValueError(f"pattern {pattern} [{precision}]: {exc}") from None
    n, agree = c.confident(tol.top1_margin)
    return ParityResult(pattern, precision, c.samples, {k: e.max_abs for k, e in c.outputs.items()},
                        {k: e.rel for k, e in c.outputs.items()}, float(c.cosine_min), float(c.cosine_mean),
                        float(c.top1_agreement), c.metric_ref, c.metric_got, c.metric_delta, tol.to_dict(), n, agree,
                        c.failed(tol, pattern=pattern, precision=precision))


def ort_session(path: Any, threads: int = 1, providers: Sequence[str] = ("CPUExecutionProvider",)) -> Any:
    from runtime.runners.onnxrt import create_session, session_options

    return create_session(path, session_options(threads=threads), providers)


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
              "tensor(int32)": np.int32, "tensor(bool)": np.bool_}


def run_graph(session: Any, feeds: Sequence[Feed]) -> dict[str, np.ndarray]:
    """Outputs of ``session`` over all feeds, concatenated, as float32 (casts inputs to the graph's dtypes)."""
    types = {i.name: _ORT_TYPES.get(i.type) for i in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for feed in feeds:
        cast = {k: (np.asarray(v).astype(types[k]) if types.get(k) is not None else np.asarray(v))
                for k, v in feed.items() if k in types}
        for n, v in zip(names, session.run(names, cast)):
            parts[n].append(np.asarray(v, dtype=np.float32))
    return {n: np.concatenate(v) for n, v in parts.items()}


def torch_outputs(module: Any, batches: Sequence[Sequence[Any]]) -> dict[str, np.ndarray]:
    """The PyTorch branch's outputs over positional input batches, concatenated."""
    import torch

    parts: dict[str, list[np.ndarray]] = {n: [] for n in module.output_names}
    module.eval()
    with torch.no_grad():
        for args in batches:
            for n, v in zip(module.output_names, module(*args)):
                parts[n].append(v.detach().cpu().numpy().astype(np.float32))
    return {n: np.concatenate(v) for n, v in parts.items()}


def validate_graph(path: Any, pattern: str, precision: str, feeds: Sequence[Feed], ref: Mapping[str, np.ndarray], *,
                   task: str = "single-label", labels: np.ndarray | None = None,
                   tolerance: Tolerance | None = None, threads: int = 1) -> ParityResult:
    got = run_graph(ort_session(path, threads), feeds)
    return compare_outputs(pattern, precision, ref, got, task=task, labels=labels, tolerance=tolerance)


def check_parity(results: Sequence[ParityResult], hint: str = "") -> None:
    failures = [f for r in results for f in r.failures]
    if failures:
        raise ParityError(failures, hint)
