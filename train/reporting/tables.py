"""Plain-text tables for the terminal (the demo and the CLI print the same ones)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def pattern_table(rows: Mapping[str, Mapping[str, Any]]) -> str:
    """One line per availability pattern: every metric column, then the sample count."""
    names = sorted({k for r in rows.values() for k in r if k != "num_samples"})
    width = max(len("pattern"), *(len(k) for k in rows))
    lines = [f"{'pattern':<{width}}  " + "  ".join(f"{n:>9}" for n in names) + "  samples"]
    for key, row in rows.items():
        lines.append(f"{key:<{width}}  " + "  ".join(f"{row.get(n, float('nan')):9.4f}" for n in names)
                     + f"  {row['num_samples']:7d}")
    return "\n".join(lines)
