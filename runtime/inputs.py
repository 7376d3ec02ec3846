"""What each modality's raw input must look like, cheap checks of it, and typed-error mapping.

Shared by the session (mapping ``PreprocessError`` to the runtime's typed errors) and the
sensor hub (health checks at push time, without running the full preprocessing).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from runtime.errors import InputDtypeError, InputShapeError, NonFiniteInput, RuntimeInputError
from runtime.preprocess_base import PreprocessError, as_numeric  # one definition of "numeric"

_BY_REASON: dict[str, type[RuntimeInputError]] = {
    "type": InputDtypeError, "dtype": InputDtypeError, "spec": InputDtypeError, "missing": InputDtypeError,
    "rank": InputShapeError, "shape": InputShapeError, "channels": InputShapeError, "empty": InputShapeError,
    "non_finite": NonFiniteInput,
}


def n_features(spec: dict[str, Any]) -> int | None:
    if spec.get("type") == "timeseries":
        return spec.get("n_channels")
    if spec.get("type") == "audio":
        return spec.get("n_features") if spec.get("input", "features") == "features" else spec.get("mfcc", {}).get("n_mfcc")
    return None


def expected_raw(spec: dict[str, Any]) -> str:
    """One line a user can act on: the raw value this modality takes."""
    kind = spec.get("type")
    if kind == "image":
        return "a numeric (H, W) or (H, W, C) array, C in 1/3/4, any size (resized to {}x{})".format(*spec.get("size", "??"))
    if kind == "text":
        return "a str (\"\" is allowed)"
    if kind == "audio" and spec.get("input") == "waveform":
        return f"a 1-D float waveform in [-1, 1] at {spec.get('sample_rate')} Hz"
    return f"a numeric (T, {n_features(spec)}) array of frames"


def from_preprocess_error(err: PreprocessError, modality: str, pattern: str | None, spec: dict[str, Any],
                          index: int | None = None) -> RuntimeInputError:
    cls = _BY_REASON.get(err.reason, InputDtypeError)
    msg = str(err).split(": ", 1)[1] if err.index is not None else str(err)  # we say which sample ourselves
    where = f"sample #{index}: " if index is not None else ""
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
    kind = spec.get("type")
    try:
        if kind == "text":
            if not isinstance(raw, str):
                raise PreprocessError("type", f"text must be str, got {type(raw).__name__}")
            return raw
        waveform = kind == "audio" and spec.get("input") == "waveform"
        arr = as_numeric(raw, None, modality, floats_only=waveform)
        if kind == "image":
            if arr.ndim not in (2, 3):
                raise PreprocessError("rank", f"image must be (H, W) or (H, W, C), got shape {arr.shape}")
            if arr.ndim == 3 and arr.shape[2] not in (1, 3, 4):
                raise PreprocessError("channels", f"image has {arr.shape[2]} channels (shape {arr.shape})")
        elif waveform:
            if arr.ndim != 1:
                raise PreprocessError("rank", f"waveform must be 1-D, got shape {arr.shape}")
        else:
            f = n_features(spec)
            if arr.ndim != 2:
                raise PreprocessError("rank", f"frames must be (T, {f}), got shape {arr.shape}")
            if arr.shape[1] != f:
                raise PreprocessError("channels", f"{arr.shape[1]} features per frame; expected {f}")
        return arr
    except PreprocessError as err:
        raise from_preprocess_error(err, modality, None, spec) from None
    except Exception as exc:  # noqa: BLE001 - exotic objects (__array__ raising, ...) are bad input too
        raise from_unexpected(exc, modality, None, spec) from None
