"""Questions answered from a modality's preprocessing spec alone (torch-free).

The placeholder is the papers' stand-in for a missing modality: an all-zero picture, an
all-zero clip or series, a blank text. It is defined here once and used by

- the exporter, which records the recipe in the bundle manifest and traces the papers' full
  graph with placeholders (a benchmark baseline);
- the benchmark, which feeds that baseline from the manifest's recipe;
- training (``ume-mma``), which feeds a dropped or missing modality's encoder the same raw
  placeholder through the same preprocessing, so that it learns on what the runtime's
  placeholder graph sees.

Two forms: ``placeholder_recipe(spec)`` is JSON (what a manifest stores), ``raw_from_recipe``
turns a recipe into the raw sensor value, and ``placeholder_raw(spec)`` is both in one step.
The raw value is *before* preprocessing: normalisation then maps zeros to -mean/std, exactly as
it maps a real sample.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

# A sequence spec without max_frames: the placeholder's length in frames (any length is valid input).
DEFAULT_PLACEHOLDER_FRAMES = 8


def placeholder_recipe(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The placeholder of the modality ``spec`` (a preprocess spec, see runtime.preprocess) as JSON.

    image: an all-zero picture of the spec's size and channels; text: the empty string (the
    tokenizer gives [CLS] [SEP] for it, as for the paper's single blank space);
    audio/timeseries: all-zero frames of the longest length the model was trained with (a silent
    clip of full length); a waveform audio spec: one second of silence.
    """
    kind = spec.get("type")
    if kind == "image":
        h, w = spec["size"]
        return {"kind": "zeros", "shape": [int(h), int(w), int(spec.get("channels", 1))], "dtype": "float32"}
    if kind == "text":
        return {"kind": "text", "value": ""}
    if kind not in ("audio", "timeseries"):
        raise ValueError(f"no placeholder for modality type {kind!r}; known: image, text, audio, timeseries")
    if spec.get("input") == "waveform":
        return {"kind": "zeros", "shape": [int(spec.get("sample_rate", 16000))], "dtype": "float32"}
    width = int(spec.get("n_features", spec.get("n_channels", 0)) or spec.get("mfcc", {}).get("n_mfcc", 0))
    return {"kind": "zeros", "shape": [int(spec.get("max_frames") or DEFAULT_PLACEHOLDER_FRAMES), width],
            "dtype": "float32"}


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
