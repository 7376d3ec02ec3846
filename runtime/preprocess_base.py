"""What every preprocessor shares: the error type, spec readers and the raw-array check.

The checks sit on the runtime's hot path (one call per sample), so they avoid work a common
input does not need: a sum is finite for almost every real frame, and only when it is not
do we look element by element.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from runtime.errors import MMEdgeError


class PreprocessError(MMEdgeError, ValueError):
    """A raw input (or a spec) that cannot be preprocessed; ``reason`` is one of REASONS."""

    def __init__(self, reason: str, message: str, index: int | None = None) -> None:
        self.reason = reason
        self.index = index
        where = f"input #{index}: " if index is not None else ""
        super().__init__(where + message)


# What a sequence longer than its spec's maximum gets ("sequence_policy"): the first frames, the last
# frames (a sliding window over a stream), or SequenceTooLongError. Absent: "truncate".
SEQUENCE_POLICIES: tuple[str, ...] = ("error", "truncate", "window")
DEFAULT_SEQUENCE_POLICY = "truncate"


class SequenceTooLongError(PreprocessError):
    """A clip longer than the spec's maximum under ``"sequence_policy": "error"`` (reason "length")."""

    def __init__(self, length: int, maximum: int, index: int | None = None) -> None:
        self.length, self.maximum = int(length), int(maximum)
        super().__init__("length", f"sequence of {self.length} frames is longer than the {self.maximum} the model "
                                   "was trained with (sequence_policy 'error'); send at most that many frames, or "
                                   "re-export with --sequence-policy MODALITY=truncate|window", index)


def need(spec: dict[str, Any], key: str) -> Any:
    if key not in spec:
        raise PreprocessError("spec", f"{spec.get('type', 'mfcc')} spec is missing {key!r}; it has {sorted(spec)}")
    return spec[key]


def pos_int(spec: dict[str, Any], key: str, value: Any = None) -> int:
    value = need(spec, key) if value is None else value
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise PreprocessError("spec", f"{spec.get('type', 'mfcc')} spec {key!r} must be a positive int, got {value!r}")
    return int(value)


def norm_stats(spec: dict[str, Any], n: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        mean = np.asarray(spec.get("mean", [0.0] * n), dtype=np.float32)
        std = np.asarray(spec.get("std", [1.0] * n), dtype=np.float32)
    except (TypeError, ValueError):
        raise PreprocessError("spec", f"mean/std must be lists of {n} numbers") from None
    if mean.shape != (n,) or std.shape != (n,):
        raise PreprocessError("spec", f"mean/std must have {n} entries, got {mean.shape} and {std.shape}")
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)):
        raise PreprocessError("spec", "mean must be finite and std finite and > 0")
    mean.setflags(write=False), std.setflags(write=False)
    return mean, std


def pad_mode(spec: dict[str, Any], fixed: str) -> bool:
    mode = spec.get("pad", "longest")
    if mode not in ("longest", fixed):
        raise PreprocessError("spec", f"pad must be 'longest' or {fixed!r}, got {mode!r}")
    return mode == fixed


def all_finite(arr: np.ndarray) -> bool:
    """No NaN/Inf in a float array. One reduction in the common case; a finite array whose sum
    overflows takes the element-wise path and still passes."""
    return math.isfinite(arr.sum(dtype=np.float64)) or bool(np.isfinite(arr).all())


def as_numeric(raw: Any, index: int | None, what: str, floats_only: bool = False) -> np.ndarray:
    if raw is None:
        raise PreprocessError("missing", f"{what} is None; drop missing modalities before preprocessing", index)
    if isinstance(raw, (str, bytes)):
        raise PreprocessError("type", f"{what} must be an array, got {type(raw).__name__}", index)
    try:
        arr = raw if type(raw) is np.ndarray else np.asarray(raw)
    except (ValueError, TypeError) as exc:  # ragged nested lists
        raise PreprocessError("type", f"{what} is not a rectangular array: {exc}", index) from None
    kind = arr.dtype.kind
    if kind not in ("f" if floats_only else "uif"):
        hint = " (int PCM: divide by 32768 first)" if floats_only and kind in "ui" else ""
        raise PreprocessError("dtype", f"{what} has dtype {arr.dtype}; expected {'float' if floats_only else 'int/uint/float'}{hint}", index)
    if arr.size == 0:
        raise PreprocessError("empty", f"{what} is empty (shape {arr.shape})", index)
    if kind == "f" and not all_finite(arr):
        raise PreprocessError("non_finite", f"{what} contains NaN or Inf", index)
    return arr


def all_real_mask(cache: dict[int, np.ndarray], t: int, limit: int = 4096) -> np.ndarray:
    """A read-only (1, t) int64 mask of ones, shared between calls through ``cache``: each numpy call
    after an inference runs with cold caches, and graphs never write their inputs. Races only
    build equal arrays; ``limit`` bounds the cache when lengths are unbounded."""
    mask = cache.get(t)
    if mask is None:
        mask = np.ones((1, t), dtype=np.int64)
        mask.setflags(write=False)
        if len(cache) < limit:
            cache[t] = mask
    return mask
