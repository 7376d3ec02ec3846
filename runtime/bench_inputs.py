"""Deterministic synthetic inputs for the benchmark, built from a bundle's manifest alone.

The runtime has no dataset, so each modality gets one synthetic *raw* sample (seed 0), shaped
as its sensor would deliver it, and the bundle's own preprocessing turns it into feeds: every
graph gets valid shapes and dtypes. Latency of these graphs does not depend on the values.
Sequence length is the spec's ``sequence_length`` (runtime.modality_spec: ``max_frames`` /
``max_length``, text filled to it, or the one default of its kind), or the length asked for per
modality (``lengths``): what a typical input measures, e.g. a 9-token question under a 24-token
maximum. Such a raw sample is exactly that long *before* preprocessing, so the runtime-level
measurements (``Runtime.predict``) see the same length as the graph-level ones.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import InvalidArgument, UnknownModality
from runtime.manifest import GraphEntry, Manifest
from runtime.modality_spec import TEXT_WORD, raw_from_recipe, spec_of, synthetic_raw
from runtime.patterns import Pattern, feed_name
from runtime.preprocess import make_preprocessor

__all__ = ["Inputs", "raw_of_length", "synthetic_raw"]


def raw_of_length(m: str, raw_spec: Mapping[str, Any], pre: Any, n: int) -> Any:
    """A raw sample of modality ``m`` that ``pre`` turns into exactly ``n`` tokens / frames; InvalidArgument
    for a modality without a sequence, a spec that pads every input to its maximum, or ``n`` out of range."""
    spec = spec_of(raw_spec)
    if not spec.sequence:
        raise InvalidArgument(f"--sequence-length {m}={n}: {m} is {spec.type}, which has no sequence length")
    if raw_spec.get("pad") in ("max_length", "max_frames"):
        raise InvalidArgument(f"--sequence-length {m}={n}: {m}'s spec pads every input to {spec.sequence_length}, "
                              "so its graphs only ever see that length")
    if not 1 <= n <= spec.sequence_length:
        raise InvalidArgument(f"--sequence-length {m}={n}: must be between 1 and {m}'s maximum {spec.sequence_length}")
    if spec.type != "text":
        # The shortest prefix of the synthetic clip that preprocesses to n frames (rows of features, or
        # the samples of a waveform that its MFCC turns into n frames); the length grows with the prefix.
        full = np.asarray(spec.synthetic_raw())
        lo, hi = 1, len(full)
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (mid + 1, hi) if _length(pre, full[:mid]) < n else (lo, mid)
        if _length(pre, full[:lo]) != n:
            raise InvalidArgument(f"--sequence-length {m}={n}: no prefix of a {len(full)}-sample clip gives {n} frames")
        return full[:lo]
    specials = _length(pre, "")  # [CLS] [SEP], or the tokenizer's own
    if n < specials:
        raise InvalidArgument(f"--sequence-length {m}={n}: {m}'s tokenizer adds {specials} special tokens to any text")
    text = " ".join([TEXT_WORD] * (n - specials))
    got = _length(pre, text)
    if got != n:  # a tokenizer that splits the filler word
        raise InvalidArgument(f"--sequence-length {m}={n}: {m}'s tokenizer made {got} tokens of {n - specials} "
                              f"filler words")
    return text


def _length(pre: Any, raw: Any) -> int:
    """The sequence axis of the first feed ``pre`` makes of one raw sample."""
    return int(next(iter(pre([raw]).values())).shape[1])


class Inputs:
    """Preprocessed feeds per modality and batch size, cached; cast to each graph's input dtypes."""

    def __init__(self, manifest: Manifest, bundle: Path, lengths: Mapping[str, int] | None = None) -> None:
        self.manifest, self.bundle = manifest, bundle
        self.pre = {m: make_preprocessor(e.preprocess, bundle) for m, e in manifest.modalities.items()}
        self.raw = {m: synthetic_raw(e.preprocess) for m, e in manifest.modalities.items()}
        self.lengths = dict(lengths or {})
        for m, n in self.lengths.items():
            if m not in manifest.modalities:
                raise UnknownModality(f"--sequence-length {m}={n}: the bundle has no modality {m!r}; it has "
                                      f"{sorted(manifest.modalities)}")
            self.raw[m] = raw_of_length(m, manifest.modalities[m].preprocess, self.pre[m], n)
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
                    "asked_length": self.lengths.get(m),
                    "feeds": {k: list(v.shape) for k, v in self.modality(m, 1).items()}}
                for m, r in self.raw.items()}
