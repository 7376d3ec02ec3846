"""What each modality's raw input must look like, cheap checks of it, and typed-error mapping.

Shared by the session (mapping ``PreprocessError`` to the runtime's typed errors, checking
arguments and the preprocessed feeds) and the sensor hub (health checks at push time, without
running the full preprocessing).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from runtime.errors import (InputDtypeError, InputOutOfRange, InputShapeError, InvalidArgument, NonFiniteInput,
                            RuntimeInputError, SequenceTooLong)
from runtime.modality_spec import spec_of
from runtime.patterns import feed_modality
from runtime.preprocess_base import PreprocessError, SequenceTooLongError

_BY_REASON: dict[str, type[RuntimeInputError]] = {
    "type": InputDtypeError, "dtype": InputDtypeError, "spec": InputDtypeError, "missing": InputDtypeError,
    "rank": InputShapeError, "shape": InputShapeError, "channels": InputShapeError, "empty": InputShapeError,
    "non_finite": NonFiniteInput, "length": SequenceTooLong,
}


def n_features(spec: dict[str, Any]) -> int | None:
    return spec_of(spec).feature_width


def expected_raw(spec: dict[str, Any]) -> str:
    """One line a user can act on: the raw value this modality takes."""
    try:
        return spec_of(spec).expected_raw()
    except (PreprocessError, KeyError, TypeError, ValueError):  # a spec no preprocessor accepts: say so, not crash
        return f"input of an unusable {spec.get('type')!r} spec"


def from_preprocess_error(err: PreprocessError, modality: str, pattern: str | None, spec: dict[str, Any],
                          index: int | None = None) -> RuntimeInputError:
    cls = _BY_REASON.get(err.reason, InputDtypeError)
    msg = str(err).split(": ", 1)[1] if err.index is not None else str(err)  # we say which sample ourselves
    where = f"sample #{index}: " if index is not None else ""
    if isinstance(err, SequenceTooLongError):
        return SequenceTooLong(f"{where}{modality}: {msg}", pattern=pattern, modality=modality, index=index,
                               length=err.length, maximum=err.maximum)
    return cls(f"{where}{modality}: {msg}; {modality} takes {expected_raw(spec)}, or None when missing",
               pattern=pattern, modality=modality, index=index)


def from_unexpected(exc: Exception, modality: str, pattern: str | None, spec: dict[str, Any],
                    index: int | None = None) -> RuntimeInputError:
    """Anything else numpy/tokenizers raised while reading the input is still the input's fault."""
    return InputDtypeError(f"{modality}: could not read the input ({type(exc).__name__}: {exc}); {modality} takes "
                           f"{expected_raw(spec)}, or None when missing", pattern=pattern, modality=modality,
                           index=index)


def check_raw(spec: dict[str, Any], raw: Any, modality: str) -> np.ndarray | str:
    """Health check of one raw sample without preprocessing it: type, dtype, rank, channels/features,
    emptiness, NaN/Inf. Returns the sample as an array (or str); raises a typed error."""
    try:
        return spec_of(spec).check_raw(raw, what=modality)
    except PreprocessError as err:
        raise from_preprocess_error(err, modality, None, spec) from None
    except Exception as exc:  # noqa: BLE001 - exotic objects (__array__ raising, ...) are bad input too
        raise from_unexpected(exc, modality, None, spec) from None


# --------------------------------------------------------------------------- arguments and feeds
# A preprocessed float feed may lie outside the export's calibration range [lo, hi] by RANGE_SLACK
# times its width max(hi - lo, |lo|, |hi|) on either side; beyond that it is refused with InputOutOfRange
# before the graph runs. The slack is wide on purpose: calibration sees few samples, and a value a few
# times outside them is unusual, not broken. Values inside the slack that still drive a graph to NaN/Inf
# (fp16 activations overflow at 65504) become InputOutOfRange after the run (graph_checks.blame_input).
# FP16 graphs never accept more than FP16_MAX, whatever the range.
RANGE_SLACK = 100.0
FP16_MAX = 65504.0
_MIN, _MAX = np.minimum.reduce, np.maximum.reduce


def feed_bounds(input_range: list[float] | None, precision: str) -> tuple[float, float]:
    lo, hi = (-math.inf, math.inf)
    if input_range is not None:
        a, b = float(input_range[0]), float(input_range[1])
        width = max(b - a, abs(a), abs(b), 1e-6)
        lo, hi = a - RANGE_SLACK * width, b + RANGE_SLACK * width
    if precision == "fp16":
        lo, hi = max(lo, -FP16_MAX), min(hi, FP16_MAX)
    return lo, hi


def check_feed(arr: np.ndarray, name: str, bounds: tuple[float, float], pattern: str, precision: str) -> None:
    """A float feed, as handed to the graph: finite (min/max propagate NaN) and within ``bounds``."""
    low, high = float(_MIN(arr, None)), float(_MAX(arr, None))  # the ufuncs: no ndarray.min wrapper per call
    if math.isfinite(low) and math.isfinite(high) and bounds[0] <= low and high <= bounds[1]:
        return
    modality = feed_modality(name)
    if not (math.isfinite(low) and math.isfinite(high)):
        raise NonFiniteInput(f"{modality}: input {name!r} holds NaN/Inf after preprocessing and casting to "
                             f"{arr.dtype} (raw values too large for float32?); send finite values in the units "
                             "the model was trained on", pattern=pattern, modality=modality)
    raise InputOutOfRange(f"{modality}: input {name!r} spans [{low:.4g}, {high:.4g}] after preprocessing; this "
                          f"{precision} graph accepts [{bounds[0]:.4g}, {bounds[1]:.4g}] (the export's calibration "
                          f"range widened {RANGE_SLACK:g}x its width). Check the sensor's units and scaling",
                          pattern=pattern, modality=modality)


def check_top_k(top_k: Any) -> int:
    if type(top_k) is int and top_k >= 1:
        return top_k
    if isinstance(top_k, np.integer) and top_k >= 1:
        return int(top_k)
    raise InvalidArgument(f"top_k must be an int >= 1 (larger than the label count means all labels), got "
                          f"{safe_repr(top_k)}")


def check_batch(samples: Any, errors: Any) -> None:
    if not isinstance(errors, str) or errors not in ("raise", "return"):
        raise InvalidArgument(f"errors must be 'raise' or 'return', got {safe_repr(errors)}")
    if isinstance(samples, (list, tuple)):
        return
    if isinstance(samples, Sequence) and not isinstance(samples, (str, bytes, bytearray)):
        return
    raise InvalidArgument(f"predict_batch takes a list of {{modality: data or None}} dicts, got "
                          f"{type(samples).__name__}" + (" (pass list(...) of it)" if isinstance(samples, Iterable)
                                                         and not isinstance(samples, (str, bytes, Mapping)) else ""))


def safe_repr(value: Any, limit: int = 60) -> str:
    """repr() for error messages about hostile objects: never raises, never huge."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a hostile __repr__
        text = f"<{type(value).__name__} whose repr() raises>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
