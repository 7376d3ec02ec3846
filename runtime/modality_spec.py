"""Every question asked of a modality's preprocessing spec, answered once (torch-free).

A preprocessing spec is JSON (see runtime.preprocess for its keys). ``spec_of(spec)`` wraps it in
the spec class of its ``type``; that object answers

- ``max_length``: the trained maximum sequence length (``max_frames`` / ``max_length``), None when
  the spec sets none; ``sequence_length``: that, or the one default of its kind
  (DEFAULT_MAX_FRAMES / DEFAULT_MAX_TOKENS). Placeholders, synthetic benchmark inputs, encoder
  position tables and TensorRT profiles use ``sequence_length``; session warm-up uses
  ``warmup_length`` (the trained maximum, or 1: a length any graph accepts);
- ``feature_width``: features per frame (audio/timeseries), None otherwise;
- ``sequence_policy``: what the runtime does with a sequence longer than ``max_length``
  (SEQUENCE_POLICIES; absent = "truncate", which is what older bundles did);
- ``placeholder_recipe()`` / ``placeholder_raw()``: the papers' stand-in for a missing modality;
- ``synthetic_raw(seed)``: one deterministic raw sample for warm-up and benchmarks;
- ``expected_raw()`` / ``check_raw(raw)``: the raw value it takes, and a cheap check of one;
- ``feed_names(modality)``: the graph inputs its preprocessor fills (runtime.patterns.feed_name).

A new modality type (depth, lidar) is one preprocessor class plus one ``PreprocessSpec`` subclass
registered with ``@register``; ``runtime.preprocess.make_preprocessor`` dispatches through it.

The placeholder: an all-zero picture, an all-zero clip or series of ``sequence_length`` frames, a
blank text, one second of silence for a waveform (MFCC or samples input; for samples at most
``max_frames`` of them, so that no policy cuts it). It is recorded in the bundle manifest
(``placeholder_recipe``, JSON), fed to the benchmark's full-graph baseline, and fed by ``ume-mma``
training through the same preprocessing. The raw value is *before* preprocessing: normalisation
maps its zeros to -mean/std exactly as it maps a real sample.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from runtime.patterns import feed_name
from runtime.preprocess_base import DEFAULT_SEQUENCE_POLICY, SEQUENCE_POLICIES, PreprocessError, as_numeric
from runtime.preprocess_image import ImagePreprocessor
from runtime.preprocess_sequence import SampleRateError, SequencePreprocessor, mono, read_wav
from runtime.preprocess_text import TextPreprocessor

DEFAULT_MAX_FRAMES = 512  # an audio/timeseries spec without max_frames (fit_preprocess normally sets it)
DEFAULT_MAX_TOKENS = 128  # a text spec without max_length
POLICY_KEY = "sequence_policy"
TEXT_WORD = "token"  # synthetic text: this word repeated past max_length tokens

SPEC_TYPES: dict[str, type["PreprocessSpec"]] = {}
OUTPUTS: dict[str, tuple[tuple[str, str], ...]] = {}  # type -> (input name, dtype) its preprocessor makes


def register(cls: type["PreprocessSpec"]) -> type["PreprocessSpec"]:
    """Make ``cls`` the spec class of modality type ``cls.type`` (make_preprocessor dispatches through it)."""
    SPEC_TYPES[cls.type] = cls
    OUTPUTS[cls.type] = cls.outputs
    return cls


def spec_of(spec: Mapping[str, Any]) -> "PreprocessSpec":
    """The spec object of a preprocess spec dict; PreprocessError("spec") for an unknown type."""
    kind = spec.get("type") if isinstance(spec, Mapping) else None
    cls = SPEC_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise PreprocessError("spec", f"unknown preprocess type {kind!r}; expected one of {sorted(SPEC_TYPES)}")
    return cls(spec)


class PreprocessSpec:
    """Answers about one modality's spec; subclasses set ``type`` and ``outputs``."""

    type: ClassVar[str]
    outputs: ClassVar[tuple[tuple[str, str], ...]]  # (input name, dtype) its preprocessor produces
    sequence: ClassVar[bool] = False  # has a symbolic "<modality>_seq" axis
    policies: ClassVar[tuple[str, ...]] = (DEFAULT_SEQUENCE_POLICY,)  # policies its preprocessor implements

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.spec = spec

    # ---- lengths and widths
    @property
    def max_length(self) -> int | None:
        return None

    @property
    def sequence_length(self) -> int | None:
        return None

    @property
    def warmup_length(self) -> int:
        """A sequence length every graph of this spec accepts: the trained maximum, or 1 when the spec records
        none (a hand-edited manifest: the graph's position table may be shorter than sequence_length)."""
        return self.max_length or 1

    @property
    def feature_width(self) -> int | None:
        return None

    @property
    def sequence_policy(self) -> str:
        policy = self.spec.get(POLICY_KEY, DEFAULT_SEQUENCE_POLICY)
        if policy not in self.policies:
            raise PreprocessError("spec", f"{self.type} {POLICY_KEY} must be one of {list(self.policies)}, got "
                                          f"{policy!r}")
        return str(policy)

    @property
    def fits_stats(self) -> bool:
        """Whether ``train.data.stats.fit_preprocess`` fits mean/std on the training split for this spec."""
        return True

    def feed_names(self, modality: str) -> list[str]:
        return [feed_name(modality, n) for n, _ in self.outputs]

    # ---- inputs
    def placeholder_recipe(self) -> dict[str, Any]:
        raise NotImplementedError

    def placeholder_raw(self) -> Any:
        return raw_from_recipe(self.placeholder_recipe())

    def synthetic_raw(self, seed: int = 0) -> Any:
        raise NotImplementedError

    def expected_raw(self) -> str:
        raise NotImplementedError

    def check_raw(self, raw: Any, index: int | None = None, what: str | None = None) -> Any:
        """Type, dtype, rank, channels, emptiness and NaN/Inf of one raw sample, without preprocessing it;
        returns it as an array (or str); raises PreprocessError."""
        raise NotImplementedError

    def preprocessor(self, base_dir: Path | None = None) -> Any:
        raise NotImplementedError

    def describe(self) -> str:
        """One line for ``mmedge runtime info``."""
        return self.expected_raw()


@register
class ImageSpec(PreprocessSpec):
    type = "image"
    outputs = (("pixel_values", "float32"),)

    @property
    def size(self) -> tuple[int, int]:
        h, w = self.spec["size"]
        return int(h), int(w)

    @property
    def channels(self) -> int:
        return int(self.spec.get("channels", 3))

    def placeholder_recipe(self) -> dict[str, Any]:
        return {"kind": "zeros", "shape": [*self.size, self.channels], "dtype": "float32"}

    def synthetic_raw(self, seed: int = 0) -> Any:
        return np.random.default_rng(seed).integers(0, 256, (*self.size, self.channels), dtype=np.uint8)

    def expected_raw(self) -> str:
        size = self.spec.get("size", "??")
        return "a numeric (H, W) or (H, W, C) array, C in 1/3/4, any size (resized to {}x{})".format(*size)

    def check_raw(self, raw: Any, index: int | None = None, what: str | None = None) -> Any:
        arr = as_numeric(raw, index, what or "image")
        if arr.ndim not in (2, 3):
            raise PreprocessError("rank", f"image must be (H, W) or (H, W, C), got shape {arr.shape}", index)
        if arr.ndim == 3 and arr.shape[2] not in (1, 3, 4):
            raise PreprocessError("channels", f"image has {arr.shape[2]} channels (shape {arr.shape})", index)
        return arr

    def preprocessor(self, base_dir: Path | None = None) -> Any:
        return ImagePreprocessor(dict(self.spec))


@register
class TextSpec(PreprocessSpec):
    """Text truncates to max_length tokens (the tokenizer keeps the special tokens); no other policy."""

    type = "text"
    outputs = (("input_ids", "int64"), ("attention_mask", "int64"))
    sequence = True

    @property
    def max_length(self) -> int | None:
        value = self.spec.get("max_length", self.spec.get("max_tokens"))
        return int(value) if value else None

    @property
    def sequence_length(self) -> int:
        return self.max_length or DEFAULT_MAX_TOKENS

    def placeholder_recipe(self) -> dict[str, Any]:
        return {"kind": "text", "value": ""}  # the tokenizer gives [CLS] [SEP], as for the papers' blank

    def synthetic_raw(self, seed: int = 0) -> Any:
        return " ".join([TEXT_WORD] * (2 * self.sequence_length))  # truncated to max_length tokens

    def expected_raw(self) -> str:
        return "a str (\"\" is allowed)"

    def check_raw(self, raw: Any, index: int | None = None, what: str | None = None) -> Any:
        if raw is None:
            raise PreprocessError("missing", "text is None; drop missing modalities before preprocessing", index)
        if not isinstance(raw, str):
            raise PreprocessError("type", f"text must be str, got {type(raw).__name__}", index)
        return raw

    def preprocessor(self, base_dir: Path | None = None) -> Any:
        return TextPreprocessor(dict(self.spec), base_dir)


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


# ---------------------------------------------------------------------- function forms
def placeholder_recipe(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The placeholder of the modality ``spec`` as JSON (what a manifest stores)."""
    try:
        return spec_of(spec).placeholder_recipe()
    except PreprocessError:
        raise ValueError(f"no placeholder for modality type {spec.get('type')!r}; known: "
                         f"{', '.join(sorted(SPEC_TYPES))}") from None


def raw_from_recipe(recipe: Mapping[str, Any]) -> Any:
    """The raw value (str or numpy array) a placeholder recipe describes."""
    if recipe["kind"] == "text":
        return str(recipe["value"])
    if recipe["kind"] != "zeros":
        raise ValueError(f"unknown placeholder recipe kind {recipe['kind']!r}; known: zeros, text")
    return np.zeros([int(d) for d in recipe["shape"]], dtype=recipe.get("dtype", "float32"))


def placeholder_raw(spec: Mapping[str, Any]) -> Any:
    """The raw placeholder of the modality ``spec``: feed it through ``make_preprocessor(spec)``."""
    return raw_from_recipe(placeholder_recipe(spec))


def synthetic_raw(spec: Mapping[str, Any], seed: int = 0) -> Any:
    """One deterministic raw sample of a modality, shaped as its sensor would deliver it."""
    return spec_of(spec).synthetic_raw(seed)


def with_sequence_policy(spec: Mapping[str, Any], policy: str | None) -> dict[str, Any]:
    """A copy of ``spec`` that records its sequence policy explicitly (``policy``, or the spec's own, or the
    default), for the bundle manifest. Specs of types without a sequence policy are returned unchanged
    (and refuse any ``policy`` but the default)."""
    view = spec_of(spec)
    if policy is not None and policy not in view.policies:
        raise PreprocessError("spec", f"{view.type} modalities take {POLICY_KEY} {list(view.policies)}, not "
                                      f"{policy!r}")
    if view.policies == (DEFAULT_SEQUENCE_POLICY,) and POLICY_KEY not in spec:
        return dict(spec)
    return {**spec, POLICY_KEY: policy or view.sequence_policy}
