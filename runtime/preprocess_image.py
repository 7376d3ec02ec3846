"""Image preprocessing: any numeric (H, W[, C]) frame -> normalised float32 (B, C, H, W).

Normalisation is folded into one multiply-add on the raw values, ``raw * (scale / std) - mean / std``,
so a frame that already has the trained size and channel count costs two numpy calls; the
general path (channel conversion, resizing) applies the same multiply-add to the same
float32 values afterwards (both are linear), so both paths give the same bits.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from runtime.preprocess_base import PreprocessError, as_numeric, need, norm_stats, pos_int

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601


# Resize matrices are cached by (n_in, n_out, method), bounded by their total bytes (not by entries:
# one matrix per frame size, and a (224, 100_000) matrix is 90 MB); least recently used go first, and
# a matrix larger than the whole budget is rebuilt per call instead of cached.
RESIZE_CACHE_BYTES = 32 << 20
_CACHE: OrderedDict[tuple[int, int, str], np.ndarray] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_cache_bytes = 0


def _resize_matrix(n_in: int, n_out: int, method: str) -> np.ndarray:
    global _cache_bytes
    key = (n_in, n_out, method)
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
            return hit
    w = _build_matrix(n_in, n_out, method)
    if w.nbytes <= RESIZE_CACHE_BYTES:
        with _CACHE_LOCK:
            if key not in _CACHE:
                _CACHE[key] = w
                _cache_bytes += w.nbytes
            while _cache_bytes > RESIZE_CACHE_BYTES and _CACHE:
                _cache_bytes -= _CACHE.popitem(last=False)[1].nbytes
    return w


def resize_cache_bytes() -> int:
    """Bytes held by the resize-matrix cache (at most RESIZE_CACHE_BYTES)."""
    return _cache_bytes


def _build_matrix(n_in: int, n_out: int, method: str) -> np.ndarray:
    """(n_out, n_in) weights; resizing is W_h @ img @ W_w.T per channel (separable, half-pixel centres)."""
    w = np.zeros((n_out, n_in), dtype=np.float64)
    scale = n_in / n_out
    if method == "area":  # each output pixel averages the input span it covers
        for i in range(n_out):
            lo, hi = i * scale, (i + 1) * scale
            for j in range(int(np.floor(lo)), min(int(np.ceil(hi)), n_in)):
                w[i, j] = min(hi, j + 1) - max(lo, j)
        w /= w.sum(axis=1, keepdims=True)
    else:
        src = np.clip((np.arange(n_out) + 0.5) * scale - 0.5, 0, n_in - 1)
        left = np.floor(src).astype(int)
        right = np.minimum(left + 1, n_in - 1)
        frac = src - left
        w[np.arange(n_out), left] += 1 - frac
        w[np.arange(n_out), right] += frac
    out = w.astype(np.float32)
    out.setflags(write=False)
    return out


class ImagePreprocessor:
    input_names: tuple[str, ...] = ("pixel_values",)

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        size = need(spec, "size")
        if not (isinstance(size, (list, tuple)) and len(size) == 2):
            raise PreprocessError("spec", f"image size must be [H, W], got {size!r}")
        self.size = (pos_int(spec, "size", size[0]), pos_int(spec, "size", size[1]))
        self.channels = pos_int(spec, "channels")
        if self.channels not in (1, 3):
            raise PreprocessError("spec", f"image channels must be 1 or 3, got {self.channels}")
        self.scale = spec.get("scale", 1.0 / 255.0)
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) or not np.isfinite(self.scale):
            raise PreprocessError("spec", f"image scale must be a finite number, got {self.scale!r}")
        self.method = spec.get("interpolation", "bilinear")
        if self.method not in ("bilinear", "area"):
            raise PreprocessError("spec", f"interpolation must be 'bilinear' or 'area', got {self.method!r}")
        self.mean, self.std = norm_stats(spec, self.channels)
        # (C, 1, 1): broadcast over a CHW frame
        self._mul = (np.float32(self.scale) / self.std).astype(np.float32)[:, None, None]
        self._add = (-self.mean / self.std).astype(np.float32)[:, None, None]
        self._hwc = (*self.size, self.channels)
        for a in (self._mul, self._add):
            a.setflags(write=False)

    def _checked(self, raw: Any, index: int | None) -> np.ndarray:
        arr = as_numeric(raw, index, "image")
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if arr.ndim != 3:
            raise PreprocessError("rank", f"image must be (H, W) or (H, W, C), got shape {arr.shape}", index)
        if arr.shape[2] not in (1, 3, 4):
            raise PreprocessError("channels", f"image has {arr.shape[2]} channels (shape {arr.shape}); expected 1, 3 or 4 (HWC layout)", index)
        return arr

    def _resized(self, arr: np.ndarray) -> np.ndarray:
        """(C, H, W) float32 in raw units: channels converted, resized to ``size``."""
        x = arr[:, :, :3].astype(np.float32)
        if self.channels == 3 and x.shape[2] == 1:
            x = np.repeat(x, 3, axis=2)
        elif self.channels == 1 and x.shape[2] == 3:
            x = (x @ _LUMA)[:, :, None]
        x = np.ascontiguousarray(x.transpose(2, 0, 1))
        h, w = self.size
        if x.shape[1] != h:
            x = np.einsum("oh,chw->cow", _resize_matrix(x.shape[1], h, self.method), x)
        if x.shape[2] != w:
            x = x @ _resize_matrix(x.shape[2], w, self.method).T
        return x.astype(np.float32, copy=False)

    def features(self, raw: Any, index: int | None = None) -> np.ndarray:
        """One frame, scaled but not normalised (C, H, W): what the statistics are fitted on."""
        return self._resized(self._checked(raw, index)) * np.float32(self.scale)

    def normalised(self, raw: Any, index: int | None = None) -> np.ndarray:
        """One frame, model-ready (C, H, W); a view of an HWC buffer when no conversion was needed."""
        arr = self._checked(raw, index)
        if arr.shape == self._hwc:  # the sensor already delivers the trained size and channels
            # written straight into a CHW buffer: no HWC float temporary and no transposing copy
            x = np.multiply(arr.transpose(2, 0, 1), self._mul, dtype=np.float32,
                            out=np.empty((self.channels, *self.size), dtype=np.float32))
            x += self._add
            return x
        x = self._resized(arr)
        x *= self._mul
        x += self._add
        return x

    def __call__(self, raws: Sequence[Any]) -> dict[str, np.ndarray]:
        if len(raws) == 0:
            raise PreprocessError("empty", "empty batch")
        if len(raws) == 1:  # batch 1 is the streaming case: no stack copy
            return {"pixel_values": self.normalised(raws[0], 0)[None]}
        return {"pixel_values": np.stack([self.normalised(r, i) for i, r in enumerate(raws)])}
