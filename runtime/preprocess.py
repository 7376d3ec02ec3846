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
            "pad"?: "longest" | "max_length", "pad_id"?: int}
           raw: str ("" is allowed: the papers' placeholder). Special tokens are added,
           truncation keeps them. A relative tokenizer_file resolves against base_dir.
           Pads get ``pad_id``, else the tokenizer file's padding id, else [PAD] / <pad>, else 0.
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
           audio and timeseries -> values float32 (B, T, F) (F = 1 for samples), mask int64 (B, T) (1 = real
           frame); padded frames are 0 (i.e. the mean, after normalisation). T is the
           longest clip in the batch (or max_frames with "pad": "max_frames"), clips
           longer than max_frames follow "sequence_policy"?: "truncate" (default: the first
           max_frames frames), "window" (the last max_frames frames) or "error"
           (PreprocessError reason "length"); the export records it in the bundle.

Bad input raises ``PreprocessError`` (a ValueError) whose ``.reason`` is one of
REASONS and whose ``.index`` is the position in the batch. Preprocessors are
immutable after construction and safe to call from several threads.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from runtime.modality_spec import OUTPUTS, spec_of
from runtime.preprocess_base import PreprocessError, SequenceTooLongError, all_finite, as_numeric
from runtime.preprocess_image import ImagePreprocessor
from runtime.preprocess_sequence import SequencePreprocessor, dct2_ortho, mel_filterbank
from runtime.preprocess_text import TextPreprocessor

REASONS: tuple[str, ...] = ("spec", "missing", "type", "dtype", "rank", "shape", "channels", "non_finite", "empty",
                            "length", "sample_rate")
# OUTPUTS: modality type -> (input name, dtype) of its preprocessor's outputs, one spec class per type
# Spec keys that name files; a bundle copies them next to the manifest and stores relative paths.
FILE_KEYS: tuple[str, ...] = ("tokenizer_file",)


class Preprocessor(Protocol):
    spec: dict[str, Any]

    @property
    def input_names(self) -> tuple[str, ...]: ...

    def __call__(self, raws: Sequence[Any]) -> dict[str, np.ndarray]: ...

    def features(self, raw: Any, index: int | None = None) -> np.ndarray: ...  # one sample, before normalising


def make_preprocessor(spec: dict[str, Any], base_dir: Path | None = None) -> Preprocessor:
    if not isinstance(spec, dict):
        raise PreprocessError("spec", f"a preprocess spec is a dict, got {type(spec).__name__}")
    return spec_of(spec).preprocessor(base_dir)


def referenced_files(spec: dict[str, Any]) -> list[str]:
    """File paths a spec depends on (to copy into a bundle)."""
    return [str(spec[k]) for k in FILE_KEYS if spec.get(k)]


__all__ = ["FILE_KEYS", "OUTPUTS", "REASONS", "ImagePreprocessor", "PreprocessError", "Preprocessor",
           "SequencePreprocessor", "SequenceTooLongError", "TextPreprocessor", "all_finite", "as_numeric", "dct2_ortho", "make_preprocessor",
           "mel_filterbank", "referenced_files"]
