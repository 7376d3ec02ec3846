"""Availability masks for the missing-modality protocols: one Pattern per sample, seeded.

Counts are exact (rounded), not Bernoulli draws, so a "70% missing" run misses
exactly 0.7 n samples (rounded half up) and two seeds differ only in *which* samples.
No protocol ever takes every modality from a sample.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

from runtime.patterns import Pattern, all_patterns
from train.data.types import Sample


def _check(n: int, modalities: Sequence[str], fraction: float, what: str, min_modalities: int = 2) -> list[str]:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    names = list(modalities)
    if len(set(names)) != len(names) or not all(isinstance(m, str) and m for m in names):
        raise ValueError(f"modalities must be distinct non-empty names, got {names}")
    if len(names) < min_modalities:
        raise ValueError(f"this protocol needs at least {min_modalities} modalities, got {names}")
    if not isinstance(fraction, (int, float, np.floating)) or not 0.0 <= float(fraction) <= 1.0:
        raise ValueError(f"{what} must be in [0, 1], got {fraction!r}")
    return names


def _exact(fraction: float, n: int) -> int:
    """fraction * n rounded half up (Python's round() would send 2.5 to 2 but 3.5 to 4)."""
    return int(math.floor(float(fraction) * n + 0.5 + 1e-9))  # 1e-9: 0.35 * 10 is 3.4999...96 in floats


def _counts(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` near-equal integers, the earlier parts taking the remainder."""
    return [total // parts + (1 if k < total % parts else 0) for k in range(parts)]


def missing_case(n: int, modalities: Sequence[str], eta: float, case: str, seed: int) -> list[Pattern]:
    """CMPT (appendix A4) / Lee et al. missing cases over ``n`` samples.

    - ``"missing-<m>"``: round(eta n) samples lose modality m, the rest are complete.
    - ``"missing-both"`` (exactly two modalities) / ``"missing-all"`` (any M >= 2): round(eta n)
      samples are incomplete, split evenly over the modalities in the given order (the
      first ones take the remainder); each of those loses exactly that one modality.
    """
    names = _check(n, modalities, eta, "eta")
    k = _exact(eta, n)
    if case.startswith("missing-") and case[len("missing-"):] in names:
        lose = [case[len("missing-"):]]
        counts = [k]
    elif case == "missing-all" or (case == "missing-both" and len(names) == 2):
        lose, counts = names, _counts(k, len(names))
    else:
        hint = " ('missing-both' needs exactly 2 modalities; use 'missing-all')" if case == "missing-both" else ""
        raise ValueError(f"unknown case {case!r}{hint}; expected one of "
                         f"{[f'missing-{m}' for m in names] + ['missing-all'] + (['missing-both'] if len(names) == 2 else [])}")
    full = Pattern(names)
    out = [full] * n
    order = np.random.default_rng(seed).permutation(n)
    start = 0
    for m, c in zip(lose, counts):
        rest = Pattern(x for x in names if x != m)
        for i in order[start:start + c]:
            out[i] = rest
        start += c
    return out


def one_full_other_partial(n: int, modalities: Sequence[str], full: str, present_fraction: float, seed: int) -> list[Pattern]:
    """``full`` is present in every sample; every other modality in exactly round(x n) samples,
    chosen independently per modality (the missing-rate sweep)."""
    names = _check(n, modalities, present_fraction, "present_fraction")
    if full not in names:
        raise ValueError(f"full modality {full!r} is not one of {names}")
    rng = np.random.default_rng(seed)
    k = _exact(present_fraction, n)
    present = [{full} for _ in range(n)]
    for m in names:
        if m != full:
            for i in rng.permutation(n)[:k]:
                present[i].add(m)
    return [Pattern(p) for p in present]


def random_missing(n: int, modalities: Sequence[str], eta: float, seed: int) -> list[Pattern]:
    """Exactly round(eta n) samples are incomplete; each gets a uniformly random pattern among
    the non-empty proper subsets of the modalities (for two modalities: one or the other)."""
    names = _check(n, modalities, eta, "eta")
    full = Pattern(names)
    partial = [p for p in all_patterns(names) if p != full]
    rng = np.random.default_rng(seed)
    out = [full] * n
    k = _exact(eta, n)
    for i, j in zip(rng.permutation(n)[:k], rng.integers(len(partial), size=k)):
        out[i] = partial[j]
    return out


def apply_patterns(samples: Sequence[Sample], patterns: Sequence[Pattern],
                   on_empty: Literal["raise", "keep"] = "raise") -> list[Sample]:
    """Each sample restricted to its pattern; a modality missing in the data stays missing.

    A sample whose data has none of its pattern's modalities would be empty: ``"raise"``
    names it; ``"keep"`` leaves that sample as it is in the data.
    """
    if len(samples) != len(patterns):
        raise ValueError(f"got {len(samples)} samples but {len(patterns)} patterns")
    out: list[Sample] = []
    for s, p in zip(samples, patterns):
        r = s.restricted(p)
        if not r.inputs:
            if on_empty == "raise":
                raise ValueError(f"sample {s.id!r} has only {sorted(k for k, v in s.inputs.items() if v is not None)} "
                                 f"but its pattern keeps {p.key}; nothing would be left. Use on_empty='keep' to leave such samples as they are")
            r = s
        out.append(r)
    return out
