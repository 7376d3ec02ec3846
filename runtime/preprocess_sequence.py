"""Audio and timeseries preprocessing: frames (or a waveform, through MFCC or as raw samples) -> values + mask.

Raw samples (audio ``"input": "samples"``, what Wav2Vec2/HuBERT read): every sample is a frame,
values (B, N, 1). ``"normalize": "per-clip"`` (the default) is the HF Wav2Vec2FeatureExtractor's
``do_normalize``: (x - mean) / sqrt(var + 1e-7) over the clip's kept samples (population
variance, after the sequence policy has cut it, as HF normalises after truncation); ``"none"``
passes the samples through. No fitted mean/std apply. Nothing is ever resampled: a .wav at
another rate than the spec's is a SampleRateError.

A clip longer than ``max_frames`` follows the spec's ``sequence_policy`` (runtime.modality_spec):
"truncate" keeps the first max_frames frames, "window" the last max_frames, "error" raises
SequenceTooLongError. ``cuts`` counts the samples truncated or windowed so far (a host reads it
through ``Runtime.sequence_cuts``); it is the only state that changes after construction, guarded
by a lock on the (rare) cutting path only.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import threading
import wave
from pathlib import Path

import numpy as np

from runtime.preprocess_base import (DEFAULT_SEQUENCE_POLICY, SEQUENCE_POLICIES, PreprocessError, SequenceTooLongError,
                                     all_real_mask, as_numeric, need, norm_stats, pad_mode, pos_int)

NORMALIZE_MODES: tuple[str, ...] = ("per-clip", "none")
PER_CLIP_EPS = 1e-7  # transformers' Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm


class SampleRateError(PreprocessError):
    """A clip recorded at another rate than the spec's (reason "sample_rate"); the runtime never resamples."""

    def __init__(self, rate: int, expected: int, what: str = "the clip", index: int | None = None) -> None:
        self.rate, self.expected = int(rate), int(expected)
        super().__init__("sample_rate", f"{what} is sampled at {self.rate} Hz but the model reads {self.expected} Hz; "
                                        f"nothing is resampled: resample it first (e.g. sox in.wav -r {self.expected} "
                                        "out.wav)", index)


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """(float32 mono waveform in [-1, 1), sample rate) from a 16-bit PCM .wav (stdlib ``wave``)."""
    try:
        with wave.open(str(path), "rb") as w:
            channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            frames = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as exc:  # each message ends in "; <how to fix it>" (train.data.readers splits it)
        raise PreprocessError("type", f"{path}: cannot read as a wav: {exc}; write 16-bit PCM wav "
                                      "(e.g. sox in.wav -b 16 out.wav)") from None
    if width != 2:
        raise PreprocessError("dtype", f"{path}: wav has {8 * width}-bit samples, only 16-bit PCM is read; "
                                       "convert with e.g. `sox in.wav -b 16 out.wav`")
    if channels != 1:
        raise PreprocessError("channels", f"{path}: wav has {channels} channels, only mono is read; "
                                          "downmix with e.g. `sox in.wav out.wav remix -`")
    return np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0, int(rate)


def mono(arr: np.ndarray, index: int | None = None) -> np.ndarray:
    """A 1-D or (N, 1) waveform as 1-D; stereo / multi-channel arrays are refused (reason "channels")."""
    if arr.ndim == 1:
        return arr
    if arr.ndim == 2 and arr.shape[1] == 1:
        return arr[:, 0]
    if arr.ndim == 2:
        raise PreprocessError("channels", f"waveform has shape {arr.shape}: {arr.shape[1]} channels; the model reads "
                                          "one (mono): average the channels first, or pass (N,) / (N, 1)", index)
    raise PreprocessError("rank", f"waveform must be 1-D (N,) or (N, 1), got shape {arr.shape}", index)


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
        self.waveform = self.samples = False
        if self.kind == "timeseries":
            self.n_features = pos_int(spec, "n_channels")
        elif spec.get("input", "features") == "features":
            self.n_features = pos_int(spec, "n_features")
        elif spec["input"] == "waveform":
            self._init_mfcc(spec)
        elif spec["input"] == "samples":
            self._init_samples(spec)
        else:
            raise PreprocessError("spec", f"audio input must be 'features', 'waveform' or 'samples', got "
                                          f"{spec['input']!r}")
        mf = spec.get("max_frames")
        self.max_frames = None if mf is None else pos_int(spec, "max_frames")
        self.pad_fixed = pad_mode(spec, "max_frames")
        if self.pad_fixed and self.max_frames is None:
            raise PreprocessError("spec", "pad 'max_frames' needs max_frames")
        self.policy = spec.get("sequence_policy", DEFAULT_SEQUENCE_POLICY)
        if self.policy not in SEQUENCE_POLICIES:
            raise PreprocessError("spec", f"sequence_policy must be one of {list(SEQUENCE_POLICIES)}, got "
                                          f"{self.policy!r}")
        self.mean, self.std = (None, None) if self.samples else norm_stats(spec, self.n_features)
        self._masks: dict[int, np.ndarray] = {}
        self.cuts = 0
        self._cut_lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers pickle preprocessors; a lock does not pickle
        return {k: v for k, v in self.__dict__.items() if k != "_cut_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._cut_lock = threading.Lock()

    def _cut(self, n: int, index: int | None) -> int:
        """Start frame of the kept ``max_frames`` of an ``n``-frame clip (n > max_frames), counting the cut."""
        if self.policy == "error":
            raise SequenceTooLongError(n, self.max_frames, index)
        with self._cut_lock:
            self.cuts += 1
        return n - self.max_frames if self.policy == "window" else 0

    def frames_of(self, n_samples: int) -> int:
        """MFCC frames a waveform of ``n_samples`` gives (a clip shorter than one window gives one)."""
        return 1 if n_samples < self.win else (n_samples - self.win) // self.hop + 1

    def _init_samples(self, spec: dict[str, Any]) -> None:
        self.samples = True
        self.n_features = 1
        self.sample_rate = pos_int(spec, "sample_rate")
        self.normalize = spec.get("normalize", "per-clip")
        if self.normalize not in NORMALIZE_MODES:
            raise PreprocessError("spec", f"audio samples 'normalize' must be one of {list(NORMALIZE_MODES)}, got "
                                          f"{self.normalize!r}")
        if "mean" in spec or "std" in spec:
            raise PreprocessError("spec", "an audio 'samples' spec takes no mean/std (it normalises each clip, or not "
                                          "at all: 'normalize'); drop them")

    def sample_values(self, raw: Any, index: int | None = None) -> np.ndarray:
        """(n, 1) float32: the kept samples of one clip, normalised per clip when the spec says so."""
        x = mono(as_numeric(raw, index, "waveform", floats_only=True), index)
        if self.max_frames is not None and len(x) > self.max_frames:
            start = self._cut(len(x), index)
            x = x[start: start + self.max_frames]
        if self.normalize == "per-clip":
            x64 = x.astype(np.float64)
            x = (x64 - x64.mean()) / np.sqrt(x64.var() + PER_CLIP_EPS)
        return x.astype(np.float32)[:, None]

    def _init_mfcc(self, spec: dict[str, Any]) -> None:
        self.waveform = True
        self.sample_rate = pos_int(spec, "sample_rate")
        cfg = need(spec, "mfcc")
        self.n_fft = pos_int(cfg, "n_fft")
        self.hop = pos_int(cfg, "hop_length")
        self.win = pos_int(cfg, "win_length", cfg.get("win_length", self.n_fft))
        n_mels, self.n_features = pos_int(cfg, "n_mels"), pos_int(cfg, "n_mfcc")
        fmin, fmax = float(cfg.get("fmin", 0.0)), float(cfg.get("fmax", self.sample_rate / 2))
        if self.win > self.n_fft or self.n_features > n_mels or not 0 <= fmin < fmax <= self.sample_rate / 2:
            raise PreprocessError("spec", f"mfcc needs win_length <= n_fft, n_mfcc <= n_mels, 0 <= fmin < fmax <= sr/2; got {cfg}")
        self.log_floor = float(cfg.get("log_floor", 1e-10))
        n = np.arange(self.win)
        self.window = (0.5 - 0.5 * np.cos(2 * np.pi * n / self.win)).astype(np.float64)  # periodic Hann
        self.fbank = mel_filterbank(self.sample_rate, self.n_fft, n_mels, fmin, fmax)
        self.dct = dct2_ortho(self.n_features, n_mels)

    def mfcc(self, wave: np.ndarray, index: int | None = None) -> np.ndarray:
        x = wave.astype(np.float64)
        n = self.frames_of(len(x))
        if self.max_frames is not None and n > self.max_frames:  # only the kept frames' samples are transformed
            start = self._cut(n, index) * self.hop
            x = x[start: start + (self.max_frames - 1) * self.hop + self.win]
        if len(x) < self.win:
            x = np.pad(x, (0, self.win - len(x)))
        frames = np.lib.stride_tricks.sliding_window_view(x, self.win)[:: self.hop] * self.window
        power = np.abs(np.fft.rfft(frames, n=self.n_fft, axis=1)) ** 2
        logmel = np.log(np.maximum(power @ self.fbank.T, self.log_floor))
        return (logmel @ self.dct.T).astype(np.float32)

    def features(self, raw: Any, index: int | None = None) -> np.ndarray:
        """One sample's frames before the fitted mean/std (samples input: already normalised per clip)."""
        if self.samples:
            return self.sample_values(raw, index)
        if self.waveform:
            arr = as_numeric(raw, index, "waveform", floats_only=True)
            if arr.ndim != 1:
                raise PreprocessError("rank", f"waveform must be 1-D (mono), got shape {arr.shape}; average the channels first", index)
            return self.mfcc(arr, index)
        else:
            what = "timeseries" if self.kind == "timeseries" else "audio features"
            arr = as_numeric(raw, index, what)
            if arr.ndim != 2:
                raise PreprocessError("rank", f"{what} must be (T, {self.n_features}), got shape {arr.shape}", index)
            if arr.shape[1] != self.n_features:
                raise PreprocessError("channels", f"{what} has {arr.shape[1]} features per frame (shape {arr.shape}); expected {self.n_features}", index)
            x = arr if arr.dtype == np.float32 else arr.astype(np.float32)
        # each numpy call after an inference costs ~10 µs of cold caches: skip the no-op ones
        if self.max_frames is None or len(x) <= self.max_frames:
            return x
        start = self._cut(len(x), index)
        return x[start: start + self.max_frames]

    def __call__(self, raws: Sequence[Any]) -> dict[str, np.ndarray]:
        if len(raws) == 0:
            raise PreprocessError("empty", "empty batch")
        feats = [self.features(r, i) for i, r in enumerate(raws)]
        t = self.max_frames if self.pad_fixed else max(len(f) for f in feats)
        if len(feats) == 1 and len(feats[0]) == t:  # streaming batch 1, nothing to pad: no zero-fill + copy
            one = feats[0] if self.mean is None else (feats[0] - self.mean) / self.std
            return {"values": one[None], "mask": all_real_mask(self._masks, t)}
        values = np.zeros((len(feats), t, self.n_features), dtype=np.float32)
        mask = np.zeros((len(feats), t), dtype=np.int64)
        for i, f in enumerate(feats):
            values[i, : len(f)] = f if self.mean is None else (f - self.mean) / self.std
            mask[i, : len(f)] = 1
        return {"values": values, "mask": mask}
