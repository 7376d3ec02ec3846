"""Per-graph state of a loaded bundle (torch-free): what each pattern's graph needs per call.

``PatternGraph`` holds one pattern's manifest entry, its preprocessing steps, its feed specs
(dtype, fixed axes, accepted value range) and its runner once built; ``cast_feed`` checks one
preprocessed array against its feed spec; ``warmup_input`` makes a valid zero input for warm-up;
``warn_degraded`` raises the typed warning for graphs written with --allow-degraded.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.confidence import Confidence
from runtime.errors import BundleIntegrityError, DegradedGraphWarning, InputShapeError
from runtime.graph_checks import blame_input
from runtime.inputs import feed_bounds
from runtime.manifest import GraphEntry, Manifest, TensorSpec
from runtime.modality_spec import spec_of
from runtime.patterns import BATCH_AXIS, Pattern, feed_modality, feed_name, seq_axis_modality
from runtime.prediction import Packer
from runtime.preprocess import Preprocessor
from runtime.runners import Runner


class PatternGraph:
    """One pattern's graph: entry, per-call constants, and its (lazily created) runner."""

    def __init__(self, entry: GraphEntry, manifest: Manifest, pre: dict[str, Preprocessor]) -> None:
        self.entry, self.key = entry, entry.pattern
        self.modalities = sorted(Pattern.from_key(entry.pattern))
        self.outputs = [o.name for o in entry.outputs]
        ranges = input_ranges(manifest)
        self.packer = packer_for(entry, manifest, None)
        # precomputed once: per call, only the preprocessors and the checks of their arrays run
        self.steps = [(m, pre[m], {n: feed_name(m, n) for n in pre[m].input_names}) for m in self.modalities]
        self.feeds = [FeedSpec(t.name, np.dtype(t.dtype), len(t.shape),
                                tuple((i, d) for i, d in enumerate(t.shape) if isinstance(d, int)), list(t.shape),
                                feed_bounds(ranges.get(t.name), entry.precision) if np.dtype(t.dtype).kind == "f"
                                else None)
                      for t in entry.inputs]
        self.runner: Runner | None = None


def input_ranges(manifest: Manifest) -> dict[str, Any]:
    """Feed name -> the value range recorded at export (from the calibration samples)."""
    return {n: r for e in manifest.modalities.values() for n, r in (e.input_range or {}).items()}


def packer_for(entry: GraphEntry, manifest: Manifest, alpha: float | None) -> Packer:
    """The graph's Packer: blame for non-finite outputs, and its confidence section (if any) at ``alpha``
    (None: the export's)."""
    multi = manifest.task == "multi-label"
    conf = None if entry.confidence is None else Confidence.from_section(entry.confidence, entry.pattern, multi, alpha)
    ranges = input_ranges(manifest)
    return Packer(entry.pattern, [o.name for o in entry.outputs], manifest.labels, multi,
                  blame=lambda feeds: blame_input(feeds, ranges, entry.pattern, entry.precision), confidence=conf)


@dataclass(frozen=True)
class FeedSpec:
    name: str
    dtype: np.dtype
    ndim: int
    fixed: tuple[tuple[int, int], ...]  # (axis, size) of the non-symbolic axes
    shape: list[int | str]
    bounds: tuple[float, float] | None  # float feeds: accepted [low, high] (runtime.inputs.feed_bounds)


def degraded_patterns(manifest: Manifest, precision: str) -> list[str]:
    return [g.pattern for g in manifest.graphs if g.precision == precision and g.degraded]


def warn_degraded(bundle_dir: Path, manifest: Manifest, precision: str) -> None:
    bad = degraded_patterns(manifest, precision)
    if bad:
        warnings.warn(DegradedGraphWarning(
            f"{bundle_dir}: the {precision} graphs of {bad} missed their parity tolerance and were written with "
            "--allow-degraded; their predictions may differ from the trained model's. Load another precision, or "
            "re-export without --allow-degraded (`mmedge runtime info` shows which graphs); "
            "warnings.simplefilter('error', DegradedGraphWarning) makes loading them an error"), stacklevel=3)


def cast_feed(arrays: dict[str, np.ndarray], spec: FeedSpec, key: str) -> np.ndarray:
    arr = arrays.get(spec.name)
    if arr is None:
        raise BundleIntegrityError(f"graph {key!r} wants input {spec.name!r} but preprocessing makes "
                                   f"{sorted(arrays)}; the manifest and graph disagree: re-export", pattern=key)
    if arr.dtype is not spec.dtype and arr.dtype != spec.dtype:  # builtin dtypes are singletons: `is` first
        arr = arr.astype(spec.dtype)
    shape = arr.shape
    if len(shape) != spec.ndim or not all([shape[i] == d for i, d in spec.fixed]):
        raise InputShapeError(f"input {spec.name!r} has shape {list(arr.shape)} after preprocessing; the graph wants "
                              f"{spec.shape}", pattern=key, modality=feed_modality(spec.name))
    return arr


def warmup_input(spec: TensorSpec, manifest: Manifest) -> np.ndarray:
    """Zeros (ones for masks/ids) of a valid shape: batch 1, sequence axes at the spec's warmup_length."""
    def size(axis: str) -> int:
        if axis == BATCH_AXIS:
            return 1
        entry = manifest.modalities.get(seq_axis_modality(axis) or feed_modality(spec.name))
        return spec_of(entry.preprocess).warmup_length if entry is not None else 1

    shape = [d if isinstance(d, int) else size(d) for d in spec.shape]
    fill = 1 if np.dtype(spec.dtype).kind in "iu" else 0
    return np.full(shape, fill, dtype=spec.dtype)
