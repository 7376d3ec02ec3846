"""Parity of an exported graph with its PyTorch branch, on the same held-out real samples.

Numbers per (pattern, precision), all over the validation rows:
- ``max_abs``: max |ort - torch| per output;
- ``max_rel``: max |ort - torch| / max |torch| per output (relative to the output's scale:
  an element-wise ratio explodes on logits near zero and says nothing);
- ``cosine_min`` / ``cosine_mean``: row-wise cosine similarity of ``fused_embedding``;
- ``top1_agreement``: fraction of rows whose predicted class agrees (multi-label: fraction of
  thresholded labels that agree);
- ``metric_torch`` / ``metric_ort`` / ``metric_delta``: the task metric (accuracy; multi-label:
  label-wise accuracy at 0.5) against the true labels.

Default tolerances: fp32 1e-4 absolute on logits; fp16 top-1 agreement >= 0.99; int8 >= 0.97.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

Feed = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Tolerance:
    max_abs_logits: float | None = None
    min_top1: float | None = None
    min_cosine: float | None = None


DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(max_abs_logits=1e-4),
    "fp16": Tolerance(min_top1=0.99),
    "int8": Tolerance(min_top1=0.97),
}


@dataclass
class Failure:
    pattern: str
    precision: str
    output: str
    check: str
    value: float
    limit: float

    def __str__(self) -> str:
        op = "<=" if self.check.startswith("max") else ">="
        return (f"pattern {self.pattern} [{self.precision}] output {self.output!r}: {self.check} = {self.value:.6g}, "
                f"needs {op} {self.limit:g}")


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
    tolerance: dict[str, float | None]
    failures: list[Failure] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["failures"] = [str(f) for f in self.failures]
        d["passed"] = self.passed
        return d


class ParityError(ValueError):
    """Graphs that miss their tolerance; ``failures`` lists every (pattern, output, numbers)."""

    def __init__(self, failures: Sequence[Failure], hint: str = "") -> None:
        self.failures = list(failures)
        lines = "\n  ".join(str(f) for f in self.failures)
        super().__init__(f"{len(self.failures)} parity check(s) failed:\n  {lines}"
                         + (f"\n{hint}" if hint else ""))


def _task_pred(task: str, probs: np.ndarray) -> np.ndarray:
    return (probs >= 0.5) if task == "multi-label" else probs.argmax(axis=-1)


def task_metric(task: str, probs: np.ndarray, labels: np.ndarray) -> float:
    pred = _task_pred(task, probs)
    if task == "multi-label":
        return float((pred == (labels >= 0.5)).mean())
    return float((pred == labels).mean())


def compare_outputs(pattern: str, precision: str, ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray], *,
                    task: str = "single-label", labels: np.ndarray | None = None,
                    tolerance: Tolerance | None = None) -> ParityResult:
    """Compare concatenated outputs (``ref``: torch, ``got``: the graph) and apply ``tolerance``."""
    tol = tolerance or DEFAULT_TOLERANCES.get(precision, Tolerance())
    max_abs, max_rel = {}, {}
    for name, r in ref.items():
        r64, g64 = np.asarray(r, np.float64), np.asarray(got[name], np.float64)
        if r64.shape != g64.shape:
            raise ValueError(f"pattern {pattern} [{precision}] output {name!r}: shape {g64.shape} != torch {r64.shape}")
        diff = np.abs(g64 - r64)
        max_abs[name] = float(diff.max()) if diff.size else 0.0
        max_rel[name] = max_abs[name] / max(float(np.abs(r64).max()) if r64.size else 0.0, 1e-12)
    e_r = np.asarray(ref["fused_embedding"], np.float64)
    e_g = np.asarray(got["fused_embedding"], np.float64)
    norms = np.linalg.norm(e_r, axis=1) * np.linalg.norm(e_g, axis=1)
    cos = (e_r * e_g).sum(axis=1) / np.maximum(norms, 1e-12)
    task_probs_r, task_probs_g = np.asarray(ref["probabilities"]), np.asarray(got["probabilities"], np.float32)
    agree = float((_task_pred(task, task_probs_r) == _task_pred(task, task_probs_g)).mean())
    m_t = m_o = delta = None
    if labels is not None:
        m_t, m_o = task_metric(task, task_probs_r, labels), task_metric(task, task_probs_g, labels)
        delta = m_o - m_t
    result = ParityResult(pattern, precision, int(e_r.shape[0]), max_abs, max_rel, float(cos.min()),
                          float(cos.mean()), agree, m_t, m_o, delta, asdict(tol))
    if tol.max_abs_logits is not None and not max_abs["logits"] <= tol.max_abs_logits:
        result.failures.append(Failure(pattern, precision, "logits", "max_abs", max_abs["logits"], tol.max_abs_logits))
    if tol.min_top1 is not None and not agree >= tol.min_top1:
        result.failures.append(Failure(pattern, precision, "probabilities", "top1_agreement", agree, tol.min_top1))
    if tol.min_cosine is not None and not float(cos.min()) >= tol.min_cosine:
        result.failures.append(Failure(pattern, precision, "fused_embedding", "cosine_min", float(cos.min()),
                                       tol.min_cosine))
    return result


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
