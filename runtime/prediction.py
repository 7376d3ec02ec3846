"""A graph's outputs -> one ``Prediction`` per sample: probabilities, top labels, checks.

This runs after every inference, right after onnxruntime has pushed our data out of the
caches, so the batch-1 path uses plain Python on the (short) probability row and a few
numpy calls instead of batch-shaped array work.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from runtime.confidence import Confidence
from runtime.errors import BundleIntegrityError, InferenceError, NonFiniteInput, RuntimeInputError

# feeds -> the input's typed error when NaN/Inf outputs are the input's fault, else None
Blame = Callable[[Mapping[str, np.ndarray]], RuntimeInputError | None]

LOGITS, PROBS = ("logits",), ("probabilities", "probs")
EMBEDDING = ("fused_embedding", "embedding")
_PY_SORT_UP_TO = 64  # labels; above this, numpy's argsort beats sorting a Python list


@dataclass(slots=True)  # not frozen: frozen dataclasses pay a setattr per field, on every prediction
class Prediction:
    """One sample's result. On a ``lazy`` runtime the first call of a pattern also creates its
    session, and that time is inside ``inference_ms``."""

    pattern: str  # key of the graph that ran, e.g. "audio+image"
    probabilities: np.ndarray  # (num_labels,)
    top: list[tuple[str, float]]  # (label, probability), best first
    logits: np.ndarray | None
    embedding: np.ndarray | None
    timings: dict[str, float] = field(default_factory=dict)  # preprocess_ms, inference_ms, total_ms (of its batch)
    batch_size: int = 1  # samples that ran together in one session.run (timings are for the whole batch)
    # Filled only when the bundle has a confidence section for this graph (runtime.confidence).
    # ``probabilities``/``top`` stay the graph's own (T > 0 never changes the ranking or the label).
    calibrated_probabilities: np.ndarray | None = None  # softmax/sigmoid(logits / T)
    prediction_set: list[str] | None = None  # conformal set at the runtime's alpha, most probable first
    set_size: int | None = None
    abstained: bool | None = None  # None: the bundle sets no abstention threshold
    # modalities that were present but not used: the bundle lacks their pattern and the runtime (with
    # fallback on) ran the best exported sub-pattern ``pattern`` instead
    ignored: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return self.top[0][0]


def pick(names: Sequence[str], wanted: Sequence[str]) -> str | None:
    return next((n for n in wanted if n in names), None)


class Packer:
    """Turns one graph's output list into Predictions (built once per graph, immutable)."""

    def __init__(self, pattern: str, outputs: Sequence[str], labels: Sequence[str], multi_label: bool,
                 blame: Blame | None = None, confidence: Confidence | None = None) -> None:
        self.pattern, self.labels, self.multi_label, self.blame = pattern, list(labels), multi_label, blame
        self.confidence = confidence
        logits, probs, emb = pick(outputs, LOGITS), pick(outputs, PROBS), pick(outputs, EMBEDDING)
        if logits is None and probs is None:
            raise BundleIntegrityError(f"graph {pattern!r} has neither logits nor probabilities: {list(outputs)}; "
                                       "re-export the bundle", pattern=pattern)
        index = {n: i for i, n in enumerate(outputs)}
        self._logits, self._probs = index.get(logits) if logits else None, index.get(probs) if probs else None
        self._emb = index.get(emb) if emb else None

    def __call__(self, values: Sequence[np.ndarray], top_k: int, timings: dict[str, float],
                 feeds: dict[str, np.ndarray]) -> list[Prediction]:
        logits = values[self._logits] if self._logits is not None else None
        probs = values[self._probs] if self._probs is not None else None
        if probs is None:
            probs = _sigmoid(logits) if self.multi_label else _softmax(logits)  # type: ignore[arg-type]
        emb = values[self._emb] if self._emb is not None else None
        if probs.ndim != 2 or probs.shape[1] != len(self.labels):
            raise BundleIntegrityError(f"graph {self.pattern!r} returns {list(probs.shape)} scores but the manifest has "
                                       f"{len(self.labels)} labels; re-export the bundle", pattern=self.pattern)
        preds = self._pack(probs, logits, emb, top_k, timings, feeds)
        if self.confidence is not None:  # after _pack: its non-finite check has run on the graph's outputs
            self.confidence.annotate(preds, self.confidence.calibrate(logits, probs), self.labels)
        return preds

    def _pack(self, probs: np.ndarray, logits: np.ndarray | None, emb: np.ndarray | None, top_k: int,
              timings: dict[str, float], feeds: dict[str, np.ndarray]) -> list[Prediction]:
        n, k = probs.shape[0], max(1, min(int(top_k), probs.shape[1]))
        if n == 1 and probs.shape[1] <= _PY_SORT_UP_TO:  # the streaming case
            p = probs[0].tolist()
            if not math.isfinite(sum(p)):
                self._non_finite(probs, feeds)
            order = sorted(range(len(p)), key=p.__getitem__, reverse=True)[:k]  # stable: ties keep label order
            # onnxruntime returns fresh arrays per run, so row views share nothing with another result
            return [Prediction(self.pattern, probs[0], [(self.labels[j], p[j]) for j in order],
                               None if logits is None else logits[0], None if emb is None else emb[0], timings, 1)]
        if not math.isfinite(probs.sum(dtype=np.float64)):
            self._non_finite(probs, feeds)
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        labels = self.labels
        return [Prediction(self.pattern, probs[i].copy(), [(labels[j], float(probs[i, j])) for j in order[i]],
                           None if logits is None else logits[i].copy(), None if emb is None else emb[i].copy(),
                           dict(timings), n)
                for i in range(n)]

    def _non_finite(self, probs: np.ndarray, feeds: dict[str, np.ndarray]) -> None:
        """Only probabilities are checked: a NaN anywhere reaches them, and an infinite logit of a
        multi-label head is a saturated (valid) score, not an error."""
        if np.isfinite(probs).all():
            return  # finite values whose sum overflowed
        bad = [k for k, v in feeds.items() if v.dtype.kind == "f" and not np.isfinite(v).all()]
        if bad:  # raw values passed the check but overflowed the graph's input dtype
            raise NonFiniteInput(f"inputs {bad} overflow after preprocessing/casting (values too large for "
                                 f"{[str(feeds[b].dtype) for b in bad]})", pattern=self.pattern)
        err = self.blame(feeds) if self.blame is not None else None
        if err is not None:
            raise err
        raise InferenceError(f"graph {self.pattern!r} produced NaN/Inf outputs on finite inputs inside the export's "
                             "range", pattern=self.pattern)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))
