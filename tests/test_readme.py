"""README statements that must not go stale: the method table matches the registry."""
from __future__ import annotations

import re
from pathlib import Path

from train.methods import available_methods

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_methods() -> list[str]:
    text = README.read_text()
    start, end = text.index("<!-- methods:start"), text.index("<!-- methods:end -->")
    return re.findall(r"^\| `([^`]+)` \|", text[start:end], flags=re.M)


def test_the_method_table_lists_exactly_the_registered_methods() -> None:
    rows = readme_methods()
    assert len(rows) == len(set(rows)), f"a method appears twice in README's table: {rows}"
    assert sorted(rows) == available_methods(), (
        f"README.md's method table ({sorted(rows)}) differs from the registry ({available_methods()}): "
        "add or remove its row between the methods:start/end markers")
