"""Deterministic synthetic inputs for the benchmark, built from a bundle's manifest alone.

The runtime has no dataset, so each modality gets one synthetic *raw* sample (seed 0), shaped
as its sensor would deliver it, and the bundle's own preprocessing turns it into feeds: every
graph gets valid shapes and dtypes. Latency of these graphs does not depend on the values.
Sequence length is the typical value the spec declares: ``max_frames`` (audio/timeseries) or
``max_length`` (text, filled to it); without one, ``DEFAULT_SEQ``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from runtime.manifest import GraphEntry, Manifest
from runtime.modality_spec import raw_from_recipe
from runtime.patterns import Pattern
from runtime.preprocess import make_preprocessor

DEFAULT_SEQ = 50
TEXT_WORD = "token"


def typical_seq(spec: dict[str, Any]) -> int | None:
    return spec.get("max_frames") or spec.get("max_length") or (None if spec.get("type") == "image" else DEFAULT_SEQ)


def synthetic_raw(spec: dict[str, Any], seed: int = 0) -> Any:
    """One deterministic raw sample of a modality, shaped as its sensor would deliver it."""
    rng = np.random.default_rng(seed)
    kind, seq = spec.get("type"), typical_seq(spec)
    if kind == "image":
        h, w = spec["size"]
        return rng.integers(0, 256, (h, w, spec.get("channels", 3)), dtype=np.uint8)
    if kind == "text":  # long enough to be truncated to max_length tokens
        return " ".join([TEXT_WORD] * (2 * (seq or DEFAULT_SEQ)))
    if kind == "audio" and spec.get("input") == "waveform":
        m = spec["mfcc"]
        hop, win = m["hop_length"], m.get("win_length", m["n_fft"])
        return (0.1 * rng.standard_normal((seq - 1) * hop + win)).astype(np.float32)
    width = spec.get("n_features") or spec.get("n_channels")
    return rng.standard_normal((seq, width)).astype(np.float32)


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
            self._cache[key] = {f"{m}.{k}": v for k, v in self.pre[m]([raw] * batch).items()}
        return self._cache[key]

    def feeds(self, graph: GraphEntry, batch: int, present: Pattern | None = None) -> dict[str, np.ndarray]:
        """Feeds of ``graph``; modalities outside ``present`` (default: all) get placeholders."""
        have: dict[str, np.ndarray] = {}
        for m in sorted(Pattern.from_key(graph.pattern)):
            have.update(self.modality(m, batch, placeholder=present is not None and m not in present))
        return {s.name: np.ascontiguousarray(have[s.name].astype(s.dtype, copy=False)) for s in graph.inputs}

    def describe(self) -> dict[str, Any]:
        return {m: {"raw_shape": list(np.shape(r)) if not isinstance(r, str) else f"text of {len(r.split())} words",
                    "typical_seq": typical_seq(self.manifest.modalities[m].preprocess),
                    "feeds": {k: list(v.shape) for k, v in self.modality(m, 1).items()}}
                for m, r in self.raw.items()}
