"""The one preprocessing implementation, shared by training and the torch-free runtime.

A modality's preprocessing is a JSON spec (copied verbatim into the bundle
manifest); ``make_preprocessor(spec)`` turns it into a callable that maps a
batch of raw sensor values to the named arrays an encoder consumes. Imports
numpy, tokenizers and the stdlib only.

Spec formats (keys marked ``?`` are optional; ``train.data.stats.fit_preprocess``
fills ``mean``/``std``/``max_frames``/``max_length`` from the training split):

image      {"type": "image", "size": [H, W], "channels": C (1 or 3), "scale"?: 1/255,
            "mean"?: [C], "std"?: [C], "interpolation"?: "bilinear" | "area"}
           raw: numeric array (H, W) or (H, W, C) with C in 1, 3, 4 (alpha dropped),
           any size. Grey<->RGB is converted (RGB->grey: ITU-R 601 luma). ``scale``
           multiplies the raw values whatever their dtype, so float images must
           come in the same units as at training time.
           -> pixel_values float32 (B, C, H, W)
text       {"type": "text", "tokenizer_file": "tokenizer.json", "max_length": T,
            "pad"?: "longest" | "max_length"}
           raw: str ("" is allowed: the papers' placeholder). Special tokens are added,
           truncation keeps them. A relative tokenizer_file resolves against base_dir.
           -> input_ids int64 (B, T), attention_mask int64 (B, T)
audio      {"type": "audio", "input": "features", "n_features": F, "max_frames"?: T,
            "mean"?: [F], "std"?: [F], "pad"?: "longest" | "max_frames"}
           raw: numeric (T, F) features, e.g. precomputed MFCC frames.
           {"type": "audio", "input": "waveform", "sample_rate": SR, "max_frames"?: T,
            "mfcc": {"n_mfcc": F, "n_fft": N, "hop_length": H, "n_mels": M,
                     "win_length"?: N, "fmin"?: 0, "fmax"?: SR/2, "log_floor"?: 1e-10},
            "mean"?: [F], "std"?: [F], "pad"?: ...}
           raw: 1-D float waveform in [-1, 1] at ``sample_rate`` (int PCM is refused:
           divide by 32768 first). MFCC: frames of win_length every hop_length
           (no centring; a clip shorter than one window is zero-padded to one frame),
           periodic Hann window, |rfft|^2 with n_fft, HTK-mel triangular filterbank,
           natural log floored at log_floor, DCT-II (ortho), first n_mfcc coefficients.
timeseries {"type": "timeseries", "n_channels": C, "max_frames"?: T, "mean"?: [C],
            "std"?: [C], "pad"?: ...}
           raw: numeric (T, C).
           audio and timeseries -> values float32 (B, T, F), mask int64 (B, T) (1 = real
           frame); padded frames are 0 (i.e. the mean, after normalisation). T is the
           longest clip in the batch (or max_frames with "pad": "max_frames"), clips
           longer than max_frames are truncated.

Bad input raises ``PreprocessError`` (a ValueError) whose ``.reason`` is one of
REASONS and whose ``.index`` is the position in the batch. Preprocessors are
immutable after construction and safe to call from several threads.
"""
from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

REASONS: tuple[str, ...] = ("spec", "missing", "type", "dtype", "rank", "shape", "channels", "non_finite", "empty")
OUTPUTS: dict[str, tuple[tuple[str, str], ...]] = {
    "image": (("pixel_values", "float32"),),
    "text": (("input_ids", "int64"), ("attention_mask", "int64")),
    "audio": (("values", "float32"), ("mask", "int64")),
    "timeseries": (("values", "float32"), ("mask", "int64")),
}
# Spec keys that name files; a bundle copies them next to the manifest and stores relative paths.
FILE_KEYS: tuple[str, ...] = ("tokenizer_file",)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class PreprocessError(ValueError):
    """A raw input (or a spec) that cannot be preprocessed; ``reason`` is one of REASONS."""

    def __init__(self, reason: str, message: str, index: int | None = None) -> None:
        self.reason = reason
        self.index = index
        where = f"input #{index}: " if index is not None else ""
        super().__init__(where + message)


class Preprocessor(Protocol):
    spec: dict[str, Any]

    @property
    def input_names(self) -> tuple[str, ...]: ...

    def __call__(self, raws: Sequence[Any]) -> dict[str, np.ndarray]: ...

    def features(self, raw: Any, index: int | None = None) -> np.ndarray: ...  # one sample, before normalising


def make_preprocessor(spec: dict[str, Any], base_dir: Path | None = None) -> Preprocessor:
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind == "image":
        return ImagePreprocessor(spec)
    if kind == "text":
        return TextPreprocessor(spec, base_dir)
    if kind in ("audio", "timeseries"):
        return SequencePreprocessor(spec)
    raise PreprocessError("spec", f"unknown preprocess type {kind!r}; expected one of {sorted(OUTPUTS)}")


def referenced_files(spec: dict[str, Any]) -> list[str]:
    """File paths a spec depends on (to copy into a bundle)."""
    return [str(spec[k]) for k in FILE_KEYS if spec.get(k)]


# --------------------------------------------------------------------------- helpers
def _need(spec: dict[str, Any], key: str) -> Any:
    if key not in spec:
        raise PreprocessError("spec", f"{spec.get('type', 'mfcc')} spec is missing {key!r}; it has {sorted(spec)}")
    return spec[key]


def _pos_int(spec: dict[str, Any], key: str, value: Any = None) -> int:
    value = _need(spec, key) if value is None else value
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise PreprocessError("spec", f"{spec.get('type', 'mfcc')} spec {key!r} must be a positive int, got {value!r}")
    return int(value)


def _norm_stats(spec: dict[str, Any], n: int) -> tuple[np.ndarray, np.ndarray]:
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


def _as_numeric(raw: Any, index: int | None, what: str, floats_only: bool = False) -> np.ndarray:
    if raw is None:
        raise PreprocessError("missing", f"{what} is None; drop missing modalities before preprocessing", index)
    if isinstance(raw, (str, bytes)):
        raise PreprocessError("type", f"{what} must be an array, got {type(raw).__name__}", index)
    try:
        arr = np.asarray(raw)
    except (ValueError, TypeError) as exc:  # ragged nested lists
        raise PreprocessError("type", f"{what} is not a rectangular array: {exc}", index) from None
    kinds = "f" if floats_only else "uif"
    if arr.dtype.kind not in kinds:
        hint = " (int PCM: divide by 32768 first)" if floats_only and arr.dtype.kind in "ui" else ""
        raise PreprocessError("dtype", f"{what} has dtype {arr.dtype}; expected {'float' if floats_only else 'int/uint/float'}{hint}", index)
    if arr.size == 0:
        raise PreprocessError("empty", f"{what} is empty (shape {arr.shape})", index)
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise PreprocessError("non_finite", f"{what} contains NaN or Inf", index)
    return arr


def _pad_mode(spec: dict[str, Any], fixed: str) -> bool:
    mode = spec.get("pad", "longest")
    if mode not in ("longest", fixed):
        raise PreprocessError("spec", f"pad must be 'longest' or {fixed!r}, got {mode!r}")
    return mode == fixed


# --------------------------------------------------------------------------- image
@functools.lru_cache(maxsize=64)
def _resize_matrix(n_in: int, n_out: int, method: str) -> np.ndarray:
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
        size = _need(spec, "size")
        if not (isinstance(size, (list, tuple)) and len(size) == 2):
            raise PreprocessError("spec", f"image size must be [H, W], got {size!r}")
        self.size = (_pos_int(spec, "size", size[0]), _pos_int(spec, "size", size[1]))
        self.channels = _pos_int(spec, "channels")
        if self.channels not in (1, 3):
            raise PreprocessError("spec", f"image channels must be 1 or 3, got {self.channels}")
        self.scale = spec.get("scale", 1.0 / 255.0)
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) or not np.isfinite(self.scale):
            raise PreprocessError("spec", f"image scale must be a finite number, got {self.scale!r}")
        self.method = spec.get("interpolation", "bilinear")
        if self.method not in ("bilinear", "area"):
            raise PreprocessError("spec", f"interpolation must be 'bilinear' or 'area', got {self.method!r}")
        self.mean, self.std = _norm_stats(spec, self.channels)

    def features(self, raw: Any, index: int | None = None) -> np.ndarray:
        arr = _as_numeric(raw, index, "image")
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if arr.ndim != 3:
            raise PreprocessError("rank", f"image must be (H, W) or (H, W, C), got shape {arr.shape}", index)
        c = arr.shape[2]
        if c not in (1, 3, 4):
            raise PreprocessError("channels", f"image has {c} channels (shape {arr.shape}); expected 1, 3 or 4 (HWC layout)", index)
        x = arr[:, :, :3].astype(np.float32) * np.float32(self.scale)
        if self.channels == 3 and x.shape[2] == 1:
            x = np.repeat(x, 3, axis=2)
        elif self.channels == 1 and x.shape[2] == 3:
            x = (x @ _LUMA)[:, :, None]
        x = np.ascontiguousarray(x.transpose(2, 0, 1))  # CHW
        h, w = self.size
        if x.shape[1] != h:
            x = np.einsum("oh,chw->cow", _resize_matrix(x.shape[1], h, self.method), x)
        if x.shape[2] != w:
            x = x @ _resize_matrix(x.shape[2], w, self.method).T
        return x.astype(np.float32, copy=False)

    def __call__(self, raws: Sequence[Any]) -> dict[str, np.ndarray]:
        if len(raws) == 0:
            raise PreprocessError("empty", "empty batch")
        x = np.stack([self.features(r, i) for i, r in enumerate(raws)])
        x = (x - self.mean[:, None, None]) / self.std[:, None, None]
        return {"pixel_values": x.astype(np.float32, copy=False)}


# --------------------------------------------------------------------------- text
_TOKENIZERS: dict[tuple[str, int], Any] = {}
_TOKENIZER_LOCK = threading.Lock()


def _load_tokenizer(path: Path, max_length: int) -> tuple[Any, int]:
    """One configured Tokenizer per (file, max_length), shared and never mutated afterwards."""
    from tokenizers import Tokenizer

    key = (str(path), max_length)
    with _TOKENIZER_LOCK:
        if key not in _TOKENIZERS:
            if not path.is_file():
                raise PreprocessError("spec", f"tokenizer file {path} does not exist")
            tok = Tokenizer.from_file(str(path))
            pad = tok.padding
            pad_id = pad["pad_id"] if pad else next(
                (i for t in ("[PAD]", "<pad>") if (i := tok.token_to_id(t)) is not None), 0)
            tok.no_padding()  # we pad in numpy, to the batch's longest
            tok.enable_truncation(max_length)
            _TOKENIZERS[key] = (tok, int(pad_id))
        return _TOKENIZERS[key]


class TextPreprocessor:
    input_names: tuple[str, ...] = ("input_ids", "attention_mask")

    def __init__(self, spec: dict[str, Any], base_dir: Path | None = None) -> None:
        self.spec = spec
        path = Path(_need(spec, "tokenizer_file"))
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
        self.max_length = _pos_int(spec, "max_length")
        self.pad_fixed = _pad_mode(spec, "max_length")
        self.path = path.resolve()
        self.tokenizer, self.pad_id = _load_tokenizer(self.path, self.max_length)

    def __reduce__(self) -> tuple[Any, ...]:
        # DataLoader workers rebuild from the spec (and this process-wide cache), not a copied tokenizer
        return (TextPreprocessor, ({**self.spec, "tokenizer_file": str(self.path)},))

    def _check(self, raw: Any, index: int | None) -> str:
        if raw is None:
            raise PreprocessError("missing", "text is None; drop missing modalities before preprocessing", index)
        if not isinstance(raw, str):
            raise PreprocessError("type", f"text must be str, got {type(raw).__name__}", index)
        return raw

    def features(self, raw: Any, index: int | None = None) -> np.ndarray:
        return np.asarray(self.tokenizer.encode(self._check(raw, index)).ids, dtype=np.int64)

    def __call__(self, raws: Sequence[Any]) -> dict[str, np.ndarray]:
        if len(raws) == 0:
            raise PreprocessError("empty", "empty batch")
        texts = [self._check(r, i) for i, r in enumerate(raws)]
        encs = self.tokenizer.encode_batch(texts)
        t = self.max_length if self.pad_fixed else max(len(e.ids) for e in encs)
        ids = np.full((len(encs), t), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encs), t), dtype=np.int64)
        for i, e in enumerate(encs):
            ids[i, : len(e.ids)] = e.ids
            mask[i, : len(e.ids)] = 1
        return {"input_ids": ids, "attention_mask": mask}


# --------------------------------------------------------------------------- audio / timeseries
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """(n_mels, n_fft//2+1) triangular filters equally spaced on the HTK mel scale."""
    def hz_to_mel(f: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + f / 700.0)

    mels = np.linspace(hz_to_mel(np.float64(fmin)), hz_to_mel(np.float64(fmax)), n_mels + 2)
    hz = 700.0 * (10.0 ** (mels / 2595.0) - 1.0)
    bins = np.arange(n_fft // 2 + 1) * sample_rate / n_fft
    lo, mid, hi = hz[:-2, None], hz[1:-1, None], hz[2:, None]
    up = (bins[None, :] - lo) / (mid - lo)
    down = (hi - bins[None, :]) / (hi - mid)
    return np.maximum(0.0, np.minimum(up, down))


def dct2_ortho(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) orthonormal DCT-II matrix (scipy.fft.dct(type=2, norm='ortho'), first n_out rows)."""
    k = np.arange(n_out)[:, None]
    n = np.arange(n_in)[None, :]
    m = np.cos(np.pi * k * (2 * n + 1) / (2 * n_in)) * np.sqrt(2.0 / n_in)
    m[0] /= np.sqrt(2.0)
    return m


class SequencePreprocessor:
    input_names: tuple[str, ...] = ("values", "mask")

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.kind = spec["type"]
        self.waveform = False
        if self.kind == "timeseries":
            self.n_features = _pos_int(spec, "n_channels")
        elif spec.get("input", "features") == "features":
            self.n_features = _pos_int(spec, "n_features")
        elif spec["input"] == "waveform":
            self._init_mfcc(spec)
        else:
            raise PreprocessError("spec", f"audio input must be 'features' or 'waveform', got {spec['input']!r}")
        mf = spec.get("max_frames")
        self.max_frames = None if mf is None else _pos_int(spec, "max_frames")
        self.pad_fixed = _pad_mode(spec, "max_frames")
        if self.pad_fixed and self.max_frames is None:
            raise PreprocessError("spec", "pad 'max_frames' needs max_frames")
        self.mean, self.std = _norm_stats(spec, self.n_features)

    def _init_mfcc(self, spec: dict[str, Any]) -> None:
        self.waveform = True
        self.sample_rate = _pos_int(spec, "sample_rate")
        cfg = _need(spec, "mfcc")
        self.n_fft = _pos_int(cfg, "n_fft")
        self.hop = _pos_int(cfg, "hop_length")
        self.win = _pos_int(cfg, "win_length", cfg.get("win_length", self.n_fft))
        n_mels, self.n_features = _pos_int(cfg, "n_mels"), _pos_int(cfg, "n_mfcc")
        fmin, fmax = float(cfg.get("fmin", 0.0)), float(cfg.get("fmax", self.sample_rate / 2))
        if self.win > self.n_fft or self.n_features > n_mels or not 0 <= fmin < fmax <= self.sample_rate / 2:
            raise PreprocessError("spec", f"mfcc needs win_length <= n_fft, n_mfcc <= n_mels, 0 <= fmin < fmax <= sr/2; got {cfg}")
        self.log_floor = float(cfg.get("log_floor", 1e-10))
        n = np.arange(self.win)
        self.window = (0.5 - 0.5 * np.cos(2 * np.pi * n / self.win)).astype(np.float64)  # periodic Hann
        self.fbank = mel_filterbank(self.sample_rate, self.n_fft, n_mels, fmin, fmax)
        self.dct = dct2_ortho(self.n_features, n_mels)

    def mfcc(self, wave: np.ndarray) -> np.ndarray:
        x = wave.astype(np.float64)
        if self.max_frames is not None:  # frames beyond max_frames would be truncated anyway
            x = x[: (self.max_frames - 1) * self.hop + self.win]
        if len(x) < self.win:
            x = np.pad(x, (0, self.win - len(x)))
        frames = np.lib.stride_tricks.sliding_window_view(x, self.win)[:: self.hop] * self.window
        power = np.abs(np.fft.rfft(frames, n=self.n_fft, axis=1)) ** 2
        logmel = np.log(np.maximum(power @ self.fbank.T, self.log_floor))
        return (logmel @ self.dct.T).astype(np.float32)

    def features(self, raw: Any, index: int | None = None) -> np.ndarray:
        if self.waveform:
            arr = _as_numeric(raw, index, "waveform", floats_only=True)
            if arr.ndim != 1:
                raise PreprocessError("rank", f"waveform must be 1-D (mono), got shape {arr.shape}; average the channels first", index)
            x = self.mfcc(arr)
        else:
            what = "timeseries" if self.kind == "timeseries" else "audio features"
            arr = _as_numeric(raw, index, what)
            if arr.ndim != 2:
                raise PreprocessError("rank", f"{what} must be (T, {self.n_features}), got shape {arr.shape}", index)
            if arr.shape[1] != self.n_features:
                raise PreprocessError("channels", f"{what} has {arr.shape[1]} features per frame (shape {arr.shape}); expected {self.n_features}", index)
            x = arr.astype(np.float32, copy=False)
        return x if self.max_frames is None else x[: self.max_frames]

    def __call__(self, raws: Sequence[Any]) -> dict[str, np.ndarray]:
        if len(raws) == 0:
            raise PreprocessError("empty", "empty batch")
        feats = [self.features(r, i) for i, r in enumerate(raws)]
        t = self.max_frames if self.pad_fixed else max(len(f) for f in feats)
        values = np.zeros((len(feats), t, self.n_features), dtype=np.float32)
        mask = np.zeros((len(feats), t), dtype=np.int64)
        for i, f in enumerate(feats):
            values[i, : len(f)] = (f - self.mean) / self.std
            mask[i, : len(f)] = 1
        return {"values": values, "mask": mask}
