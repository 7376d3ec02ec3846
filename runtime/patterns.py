"""Availability patterns: which modalities delivered data.

This module is the only place pattern names are made. Everything else
(training, export, manifests, the runtime) asks it for keys, so a graph
exported for ``audio+image`` is always found under that exact name.
It also names the graph I/O built from modality names: the feed ``"<modality>.<input>"``
(e.g. ``audio.values``) and the symbolic sequence axis ``"<modality>_seq"``; the exporter, the
runtime and the benchmark all use ``feed_name`` / ``seq_axis`` and their inverses.
Pure Python on purpose: it is imported by the torch-free runtime.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from itertools import combinations

SEPARATOR = "+"
FEED_SEPARATOR = "."  # "<modality>.<input>"; the modality is what precedes the first one
SEQ_AXIS_SUFFIX = "_seq"
BATCH_AXIS = "batch"


class Pattern(frozenset):
    """A non-empty set of modality names, with a canonical string key."""

    def __new__(cls, modalities: Iterable[str] = ()) -> "Pattern":
        names = frozenset(modalities)
        for name in names:
            if not isinstance(name, str) or not name:
                raise ValueError(f"modality names must be non-empty strings, got {name!r}")
            if SEPARATOR in name:
                raise ValueError(f"modality name {name!r} may not contain {SEPARATOR!r}")
        if not names:
            raise ValueError("a pattern needs at least one modality")
        return super().__new__(cls, names)

    @property
    def key(self) -> str:
        """Canonical name: sorted modality names joined by '+', e.g. 'audio+image'."""
        return SEPARATOR.join(sorted(self))

    def __str__(self) -> str:
        return self.key

    def __repr__(self) -> str:
        return f"Pattern({self.key!r})"

    @classmethod
    def from_key(cls, key: str) -> "Pattern":
        parts = key.split(SEPARATOR)
        if any(not p for p in parts):
            raise ValueError(f"malformed pattern key {key!r}")
        pattern = cls(parts)
        if pattern.key != key:
            raise ValueError(f"pattern key {key!r} is not canonical; use {pattern.key!r}")
        return pattern

    @classmethod
    def of_present(cls, inputs: Mapping[str, object]) -> "Pattern":
        """The pattern of the keys whose value is not None."""
        return cls(name for name, value in inputs.items() if value is not None)


def all_patterns(modalities: Iterable[str]) -> list[Pattern]:
    """Every non-empty subset of ``modalities``: fullest first, then by key.

    Two modalities give 3 patterns, three give 7.
    """
    names = sorted(set(modalities))
    if not names:
        raise ValueError("all_patterns needs at least one modality")
    out: list[Pattern] = []
    for size in range(len(names), 0, -1):
        out.extend(Pattern(c) for c in combinations(names, size))
    return out


def key(modalities: Iterable[str]) -> str:
    """Shorthand for ``Pattern(modalities).key``."""
    return Pattern(modalities).key


def feed_name(modality: str, input_name: str) -> str:
    """The graph input a modality's preprocessed array feeds: ``feed_name("audio", "mask") == "audio.mask"``."""
    return f"{modality}{FEED_SEPARATOR}{input_name}"


def feed_modality(name: str) -> str:
    """The modality a graph input belongs to: ``feed_modality("audio.mask") == "audio"``."""
    return name.split(FEED_SEPARATOR, 1)[0]


def seq_axis(modality: str) -> str:
    """The symbolic sequence-axis name of a modality's inputs: ``seq_axis("audio") == "audio_seq"``."""
    return f"{modality}{SEQ_AXIS_SUFFIX}"


def seq_axis_modality(axis: str) -> str | None:
    """The modality of a ``"<modality>_seq"`` axis name, or None for any other axis (e.g. "batch")."""
    return axis[: -len(SEQ_AXIS_SUFFIX)] if axis.endswith(SEQ_AXIS_SUFFIX) and len(axis) > len(SEQ_AXIS_SUFFIX) else None


def fallback_table(exported: Iterable[str], modalities: Iterable[str], order: Sequence[str] | None = None
                   ) -> dict[frozenset[str], tuple[str, tuple[str, ...]]]:
    """For every present set the ``exported`` pattern keys lack: (the sub-pattern to run, the present
    modalities it ignores). Best = drops the fewest present modalities; ties: the sub-pattern that keeps
    the modality first in ``order`` (then the modalities sorted by name), then the next one, and so on.
    A present set with no exported sub-pattern has no entry."""
    names = sorted(modalities)
    rank: dict[str, int] = {}
    for m in [*(order or []), *names]:
        rank.setdefault(m, len(rank))
    have = [Pattern.from_key(k) for k in exported]
    table: dict[frozenset[str], tuple[str, tuple[str, ...]]] = {}
    for size in range(1, len(names) + 1):
        for present in (frozenset(c) for c in combinations(names, size)):
            subs = [p for p in have if p < present]
            if present not in have and subs:
                best = min(subs, key=lambda p: (-len(p), sorted(rank.get(m, len(rank)) for m in p)))
                table[present] = (best.key, tuple(sorted(present - best)))
    return table
