"""Deterministic synthetic inputs for the benchmark, built from a bundle's manifest alone.

The runtime has no dataset, so each modality gets one synthetic *raw* sample (seed 0), shaped
as its sensor would deliver it, and the bundle's own preprocessing turns it into feeds: every
graph gets valid shapes and dtypes. Latency of these graphs does not depend on the values.
Sequence length is the spec's ``sequence_length`` (runtime.modality_spec: ``max_frames`` /
``max_length``, text filled to it, or the one default of its kind).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from runtime.manifest import GraphEntry, Manifest
from runtime.modality_spec import raw_from_recipe, spec_of, synthetic_raw
from runtime.patterns import Pattern, feed_name
from runtime.preprocess import make_preprocessor

__all__ = ["Inputs", "synthetic_raw"]


class Inputs:
    """Preprocessed feeds per modality and batch size, cached; cast to each graph's input dtypes."""

    def __init__(self, manifest: Manifest, bundle: Path) -> None:
        self.manifest, self.bundle = manifest, bundle
        self.pre = {m: make_preprocessor(e.preprocess, bundle) for m, e in manifest.modalities.items()}
        self.raw = {m: synthetic_raw(e.preprocess) for m, e in manifest.modalities.items()}
        self._cache: dict[tuple[str, int, bool], dict[str, np.ndarray]] = {}

    def modality(self, m: str, batch: int, placeholder: bool = False) -> dict[str, np.ndarray]:
        key = (m, batch, placeholder)
        if key not in self._cache:
            raw = raw_from_recipe(self.manifest.placeholders[m]) if placeholder else self.raw[m]
            self._cache[key] = {feed_name(m, k): v for k, v in self.pre[m]([raw] * batch).items()}
        return self._cache[key]

    def feeds(self, graph: GraphEntry, batch: int, present: Pattern | None = None) -> dict[str, np.ndarray]:
        """Feeds of ``graph``; modalities outside ``present`` (default: all) get placeholders."""
        have: dict[str, np.ndarray] = {}
        for m in sorted(Pattern.from_key(graph.pattern)):
            have.update(self.modality(m, batch, placeholder=present is not None and m not in present))
        return {s.name: np.ascontiguousarray(have[s.name].astype(s.dtype, copy=False)) for s in graph.inputs}

    def describe(self) -> dict[str, Any]:
        return {m: {"raw_shape": list(np.shape(r)) if not isinstance(r, str) else f"text of {len(r.split())} words",
                    "typical_seq": spec_of(self.manifest.modalities[m].preprocess).sequence_length,
                    "feeds": {k: list(v.shape) for k, v in self.modality(m, 1).items()}}
                for m, r in self.raw.items()}
