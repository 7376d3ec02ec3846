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
(runtime.spec_base) registered with ``@register`` and imported here; ``runtime.preprocess.make_preprocessor``
dispatches through it. The frame types (audio, timeseries) live in runtime.frames_spec.

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
from typing import Any

import numpy as np

from runtime.frames_spec import AudioSpec, FramesSpec, TimeseriesSpec
from runtime.preprocess_base import DEFAULT_SEQUENCE_POLICY, PreprocessError, as_numeric
from runtime.preprocess_image import ImagePreprocessor
from runtime.preprocess_text import TextPreprocessor
from runtime.spec_base import (DEFAULT_MAX_FRAMES, DEFAULT_MAX_TOKENS, OUTPUTS, POLICY_KEY, SPEC_TYPES, TEXT_WORD,
                               PreprocessSpec, raw_from_recipe, register, spec_of)

__all__ = ["AudioSpec", "DEFAULT_MAX_FRAMES", "DEFAULT_MAX_TOKENS", "FramesSpec", "ImageSpec", "OUTPUTS", "POLICY_KEY",
           "PreprocessSpec", "SPEC_TYPES", "TEXT_WORD", "TextSpec", "TimeseriesSpec", "placeholder_raw",
           "placeholder_recipe", "raw_from_recipe", "register", "spec_of", "synthetic_raw", "with_sequence_policy"]


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



# ---------------------------------------------------------------------- function forms
def placeholder_recipe(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The placeholder of the modality ``spec`` as JSON (what a manifest stores)."""
    try:
        return spec_of(spec).placeholder_recipe()
    except PreprocessError:
        raise ValueError(f"no placeholder for modality type {spec.get('type')!r}; known: "
                         f"{', '.join(sorted(SPEC_TYPES))}") from None


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