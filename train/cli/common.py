"""Arguments every `mmedge train` command shares, and the ``--set KEY=VALUE`` parser."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from runtime.errors import ConfigError


def add_data_args(p: argparse.ArgumentParser, seed_help: str = "seeds data order, init and dropout",
                  limit_help: str = "cap samples per split (quick runs)") -> None:
    """--dataset, --data-dir, --runs-dir, --seed, --limit."""
    p.add_argument("--dataset", default="av-digits", help="av-digits, easy-vqa, or a user-format directory")
    p.add_argument("--data-dir", type=Path, default=None, help="dataset cache (default: $MMEDGE_DATA_DIR or ./data)")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"),
                   help="where runs live, as <runs-dir>/<dataset folder name>/<run>")
    p.add_argument("--seed", type=int, default=0, help=seed_help)
    p.add_argument("--limit", type=int, default=None, help=limit_help)


def parse_options(items: list[str]) -> dict[str, object]:
    """--set KEY=VALUE pairs; values are JSON when they parse (0.2, true, "x"), else strings."""
    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def methods_help() -> str:
    """Every registered method with its options and defaults, from the registry (imports torch)."""
    try:
        from train.methods.registry import available_methods, method_options, method_summary
    except ModuleNotFoundError as err:  # a runtime-only install: no torch
        return f"(install the training extras to list the methods: {err.name} is missing)"
    lines = []
    for name in available_methods():
        opts = ", ".join(f"{k}={json.dumps(v)}" for k, v in method_options(name))
        lines.append(f"{name}: {method_summary(name)}\n    options: {opts or '(none)'}")
    return "\n".join(lines)
