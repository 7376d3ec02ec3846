"""Fitting a preprocess spec on the training split: normalisation statistics and sequence lengths."""
from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from runtime.modality_spec import spec_of
from runtime.preprocess import make_preprocessor
from train.data.types import ModalitySpec, Sample

STD_FLOOR = 1e-6
# Sequences up to this long keep their full length; beyond it, the 95th percentile bounds compute.
FULL_LENGTH_UP_TO = 256
TEXT_LENGTH_CAP = 512


def choose_length(lengths: Sequence[int], cap: int | None = None) -> int:
    """The longest length if it is small, else the 95th percentile (long tails are truncated)."""
    arr = np.asarray(lengths)
    n = int(arr.max()) if arr.max() <= FULL_LENGTH_UP_TO else int(math.ceil(np.percentile(arr, 95)))
    return max(1, min(n, cap) if cap else n)


def fit_preprocess(spec: dict[str, Any], raws: Sequence[Any]) -> dict[str, Any]:
    """A copy of ``spec`` with mean/std per channel (or feature) and max_frames/max_length filled in.

    Keys already in ``spec`` for lengths are kept; mean/std are always refitted. ``None``
    entries (missing modality) are ignored. Invalid raw values raise PreprocessError.
    """
    present = [r for r in raws if r is not None]
    if not present:
        raise ValueError(f"cannot fit a {spec.get('type')} preprocess spec on zero samples")
    out = copy.deepcopy({k: v for k, v in spec.items() if k not in ("mean", "std")})  # never alias a caller's lists
    kind = spec.get("type")
    if kind == "text":
        if "max_length" not in out:
            probe = make_preprocessor({**out, "max_length": TEXT_LENGTH_CAP})
            out["max_length"] = choose_length([len(probe.features(t, i)) for i, t in enumerate(present)], TEXT_LENGTH_CAP)
        return out
    pre = make_preprocessor(out)
    if not spec_of(out).fits_stats:  # e.g. audio samples, normalised per clip: only the length is fitted
        if "max_frames" not in out:
            out["max_frames"] = choose_length([len(pre.features(raw, i)) for i, raw in enumerate(present)])
        return out
    if kind == "image":
        total, sq, count = 0.0, 0.0, 0
        for i, raw in enumerate(present):  # one image at a time: no (N, C, H, W) float copy of the set
            x = pre.features(raw, i).astype(np.float64)
            total = total + x.sum(axis=(1, 2))
            sq = sq + (x * x).sum(axis=(1, 2))
            count += x.shape[1] * x.shape[2]
    else:  # audio, timeseries: statistics over real frames only
        feats = [pre.features(raw, i) for i, raw in enumerate(present)]
        if "max_frames" not in out:
            out["max_frames"] = choose_length([len(f) for f in feats])
            feats = [f[: out["max_frames"]] for f in feats]
        cat = np.concatenate(feats).astype(np.float64)
        total, sq, count = cat.sum(axis=0), (cat * cat).sum(axis=0), cat.shape[0]
    mean = total / count
    std = np.sqrt(np.maximum(sq / count - mean * mean, 0.0))
    out["mean"] = [float(m) for m in mean]
    out["std"] = [float(max(s, STD_FLOOR)) for s in std]
    return out


def fit_modalities(specs: dict[str, dict[str, Any]], train: Sequence[Sample]) -> dict[str, ModalitySpec]:
    """Fit every modality's spec on the training samples where that modality is present.

    A raw object shared by several samples (easy-vqa: one image, many questions) counts once.
    """
    out: dict[str, ModalitySpec] = {}
    for name, spec in specs.items():
        raws = [s.inputs.get(name) for s in train]
        if all(r is None for r in raws):
            raise ValueError(
                f"modality {name!r} is missing in every one of the {len(train)} training samples, so its "
                "preprocessing cannot be fitted; add training samples that have it or drop the modality")
        unique = list({id(r): r for r in raws if r is not None}.values())
        out[name] = ModalitySpec(name=name, type=spec["type"], preprocess=fit_preprocess(spec, unique))
    return out
