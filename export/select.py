"""Which patterns a build exports: ``--patterns``, ``--min-modalities``, ``--require``.

With M sensors there are 2^M - 1 patterns; a deployment that always has a camera needs only
the ones that contain it. The filters combine (a pattern must pass all of them); what is left
out goes to the manifest's ``excluded_patterns``, and the runtime can fall back from a missing
pattern to its best exported sub-pattern (runtime/session.py, off by default).
"""
from __future__ import annotations

from collections.abc import Sequence

from runtime.errors import MMEdgeError
from runtime.patterns import SEPARATOR, Pattern, all_patterns


class PatternSelectionError(MMEdgeError, ValueError):
    """Filters that name unknown modalities or leave no pattern."""


def _parse(items: Sequence[str] | str | None) -> list[str]:
    if items is None:
        return []
    if isinstance(items, str):
        items = items.split(",")
    return [i.strip() for i in items if i and i.strip()]


def select_patterns(modalities: Sequence[str], patterns: Sequence[str] | str | None = None,
                    min_modalities: int = 1, require: Sequence[str] | str | None = None
                    ) -> tuple[list[Pattern], list[str]]:
    """(patterns to export in all_patterns order, keys of those left out).

    ``patterns`` keys may list their modalities in any order ("image+audio" = "audio+image").
    """
    every = all_patterns(modalities)
    names = set(modalities)
    wanted: set[Pattern] | None = None
    if _parse(patterns):
        wanted = set()
        for key in _parse(patterns):
            p = Pattern(part.strip() for part in key.split(SEPARATOR))
            if not p <= names:
                raise PatternSelectionError(f"pattern {key!r} names {sorted(p - names)}, not modalities of this "
                                            f"model ({sorted(names)}); patterns: {[q.key for q in every]}")
            wanted.add(p)
    required = set(_parse(require))
    if required - names:
        raise PatternSelectionError(f"--require {sorted(required - names)}: not modalities of this model "
                                    f"({sorted(names)})")
    if not 1 <= min_modalities <= len(names):
        raise PatternSelectionError(f"--min-modalities {min_modalities} must be between 1 and {len(names)}, the "
                                    f"number of modalities ({sorted(names)})")
    keep = [p for p in every if (wanted is None or p in wanted) and len(p) >= min_modalities and required <= p]
    if not keep:
        raise PatternSelectionError(f"no pattern passes the filters (patterns={_parse(patterns) or 'all'}, "
                                    f"min_modalities={min_modalities}, require={sorted(required)}); patterns of "
                                    f"this model: {[q.key for q in every]}")
    return keep, [p.key for p in every if p not in keep]
