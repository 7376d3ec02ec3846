"""Spec classes of the (T, F) frame modalities: audio (features, MFCC from a waveform, raw samples) and
timeseries (torch-free; registered on import, which runtime.modality_spec does)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from runtime.preprocess_base import SEQUENCE_POLICIES, PreprocessError, as_numeric
from runtime.preprocess_sequence import SampleRateError, SequencePreprocessor, mono, read_wav
from runtime.spec_base import DEFAULT_MAX_FRAMES, PreprocessSpec, register


class FramesSpec(PreprocessSpec):
    """(T, F) frames: audio features and timeseries; a longer clip than max_frames follows the policy."""

    outputs = (("values", "float32"), ("mask", "int64"))
    sequence = True
    policies = SEQUENCE_POLICIES
    width_key: ClassVar[str]

    @property
    def max_length(self) -> int | None:
        value = self.spec.get("max_frames")
        return int(value) if value else None

    @property
    def sequence_length(self) -> int:
        return self.max_length or DEFAULT_MAX_FRAMES

    @property
    def feature_width(self) -> int | None:
        value = self.spec.get(self.width_key)
        return int(value) if value else None

    def placeholder_recipe(self) -> dict[str, Any]:  # a silent clip / flat series of full length
        return {"kind": "zeros", "shape": [self.sequence_length, self.feature_width or 0], "dtype": "float32"}

    def synthetic_raw(self, seed: int = 0) -> Any:
        rng = np.random.default_rng(seed)
        return rng.standard_normal((self.sequence_length, self.feature_width)).astype(np.float32)

    def expected_raw(self) -> str:
        return f"a numeric (T, {self.feature_width}) array of frames"

    def describe(self) -> str:
        limit = f"at most {self.max_length} frames" if self.max_length else "any length"
        return f"{self.expected_raw()}, {limit}; longer: {self.sequence_policy}"

    def check_raw(self, raw: Any, index: int | None = None, what: str | None = None) -> Any:
        arr = as_numeric(raw, index, what or self.type)
        f = self.feature_width
        if arr.ndim != 2:
            raise PreprocessError("rank", f"frames must be (T, {f}), got shape {arr.shape}", index)
        if arr.shape[1] != f:
            raise PreprocessError("channels", f"{arr.shape[1]} features per frame; expected {f}", index)
        return arr

    def preprocessor(self, base_dir: Path | None = None) -> Any:
        return SequencePreprocessor(dict(self.spec))


@register
class TimeseriesSpec(FramesSpec):
    type = "timeseries"
    width_key = "n_channels"


@register
class AudioSpec(FramesSpec):
    """Audio as precomputed (T, n_features) frames, a 1-D waveform turned into MFCC frames ("waveform"), or
    the raw samples themselves, one per frame ("samples": Wav2Vec2/HuBERT read them)."""

    type = "audio"
    width_key = "n_features"

    @property
    def input_kind(self) -> str:
        return str(self.spec.get("input", "features"))

    @property
    def waveform(self) -> bool:
        """A 1-D waveform turned into MFCC frames."""
        return self.input_kind == "waveform"

    @property
    def samples(self) -> bool:
        """A 1-D waveform whose samples are the frames (values (B, N, 1))."""
        return self.input_kind == "samples"

    @property
    def takes_waveform(self) -> bool:
        """The raw value is a 1-D waveform at ``sample_rate`` (MFCC or samples input)."""
        return self.waveform or self.samples

    @property
    def sample_rate(self) -> int | None:
        value = self.spec.get("sample_rate")
        return int(value) if value else None

    @property
    def fits_stats(self) -> bool:
        return not self.samples  # samples are normalised per clip (or not at all), never with fitted mean/std

    @property
    def sequence_length(self) -> int:
        if self.samples:  # one second: max_frames counts samples here, and 512 of them are 32 ms at 16 kHz
            return self.max_length or self.sample_rate or DEFAULT_MAX_FRAMES
        return super().sequence_length

    @property
    def feature_width(self) -> int | None:
        if self.samples:
            return 1
        if not self.waveform:
            return super().feature_width
        value = self.spec.get("mfcc", {}).get("n_mfcc")
        return int(value) if value else None

    def samples_for(self, frames: int) -> int:
        """Waveform samples that give exactly ``frames`` MFCC frames (no centring, see preprocess_sequence)."""
        m = self.spec["mfcc"]
        return (frames - 1) * int(m["hop_length"]) + int(m.get("win_length", m["n_fft"]))

    def placeholder_recipe(self) -> dict[str, Any]:
        if self.waveform:  # one second of silence
            return {"kind": "zeros", "shape": [int(self.spec.get("sample_rate", 16000))], "dtype": "float32"}
        if self.samples:  # one second of silence, or max_frames samples when shorter (never cut, whatever the policy)
            second = self.sample_rate or 16000
            return {"kind": "zeros", "shape": [min(second, self.max_length or second)], "dtype": "float32"}
        return super().placeholder_recipe()

    def synthetic_raw(self, seed: int = 0) -> Any:
        if not self.takes_waveform:
            return super().synthetic_raw(seed)
        rng = np.random.default_rng(seed)
        n = self.sequence_length if self.samples else self.samples_for(self.sequence_length)
        return (0.1 * rng.standard_normal(n)).astype(np.float32)

    def expected_raw(self) -> str:
        if self.takes_waveform:
            return f"a 1-D float waveform in [-1, 1] at {self.spec.get('sample_rate')} Hz (or a .wav at that rate)"
        return super().expected_raw()

    def describe(self) -> str:
        if not self.samples:
            return super().describe()
        limit = f"at most {self.max_length} samples" if self.max_length else "any length"
        return (f"{self.expected_raw()}, {limit}; longer: {self.sequence_policy}; normalised "
                f"{self.spec.get('normalize', 'per-clip')}")

    def check_raw(self, raw: Any, index: int | None = None, what: str | None = None) -> Any:
        if not self.takes_waveform:
            return super().check_raw(raw, index, what)
        arr = as_numeric(raw, index, what or "waveform", floats_only=True)
        if self.samples:
            return mono(arr, index)
        if arr.ndim != 1:
            raise PreprocessError("rank", f"waveform must be 1-D, got shape {arr.shape}", index)
        return arr

    def check_rate(self, rate: int, what: str = "the clip") -> None:
        """SampleRateError unless a clip recorded at ``rate`` Hz is what this spec reads (nothing is resampled)."""
        if self.takes_waveform and self.sample_rate is not None and int(rate) != self.sample_rate:
            raise SampleRateError(int(rate), self.sample_rate, what)

    def read_file(self, path: Path) -> np.ndarray:
        """A 16-bit PCM mono .wav as this spec's raw waveform; SampleRateError when its rate is not the spec's."""
        if not self.takes_waveform:
            raise PreprocessError("type", f"{path}: a .wav file gives a waveform, but this audio modality reads "
                                          f"{self.input_kind} {self.expected_raw()}; save them as .npy")
        wave, rate = read_wav(path)
        self.check_rate(rate, str(path))
        return wave

