"""Reading and checking a user-format ``dataset.json`` (the format is documented in user_format)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from train.data.errors import DataFormatError
from train.data.types import MODALITY_TYPES, TASKS

RESERVED = ("id", "label", "labels", "split")
TOP_KEYS = ("name", "task", "labels", "modalities", "split", "description")
MODALITY_KEYS: dict[str, tuple[str, ...]] = {
    "image": ("type", "size", "channels", "scale", "interpolation"),
    "text": ("type", "tokenizer_file", "max_length", "pad"),
    "audio": ("type", "input", "sample_rate", "mfcc", "n_features", "features", "max_frames", "pad"),
    "timeseries": ("type", "n_channels", "channels", "max_frames", "pad"),
}



def line_of(text: str, *needles: str) -> int | None:
    """Line (1-based) of the first needle, searching each next needle after the previous one's line.

    Best effort, for messages: dataset.json is small and hand-written, so a key's first
    quoted occurrence (after its parents) is nearly always where it is defined.
    """
    lines, start = text.splitlines(), 0
    for needle in needles:
        start = next((n for n in range(start, len(lines)) if needle in lines[n]), -1)
        if start < 0:
            return None
    return start + 1


def read_config(root: Path) -> tuple[dict[str, Any], Path, str]:
    path = root / "dataset.json"
    if not path.is_file():
        raise DataFormatError(path, None, "missing dataset.json",
                              'create it, e.g. {"task": "single-label", "modalities": {"camera": {"type": "image"}}}')
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataFormatError(path, None, f"is not UTF-8 text ({exc.reason})", "save it as UTF-8") from None
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataFormatError(path, exc.lineno, f"invalid JSON: {exc.msg}", "fix the JSON syntax") from None
    if not isinstance(cfg, dict):
        raise DataFormatError(path, 1, "must hold a JSON object")

    def err(key: str, message: str, fix: str = "", *parents: str) -> DataFormatError:
        return DataFormatError(path, line_of(text, *(f'"{k}"' for k in (*parents, key))), message, fix)

    for key in cfg:
        if key not in TOP_KEYS:
            raise err(key, f"unknown key {key!r}", f"use only {list(TOP_KEYS)}")
    if cfg.get("task") not in TASKS:
        raise err("task", f"task is {cfg.get('task')!r}", f"set \"task\" to one of {list(TASKS)}")
    mods = cfg.get("modalities")
    if not isinstance(mods, dict) or not mods:
        raise err("modalities", "\"modalities\" must be a non-empty object", 'e.g. "modalities": {"camera": {"type": "image"}}')
    for name, m in mods.items():
        if not name or "+" in name or name in RESERVED:
            raise err(name, f"modality name {name!r} is not allowed", f"use a non-empty name without '+', not one of {RESERVED}",
                      "modalities")
        kind = m.get("type") if isinstance(m, dict) else None
        if kind not in MODALITY_TYPES:
            raise err(name, f"modality {name!r} has unknown type {kind!r}", f"use one of {list(MODALITY_TYPES)}", "modalities")
        for key in m:
            if key not in MODALITY_KEYS[kind]:
                raise err(key, f"modality {name!r} ({kind}) has unknown key {key!r}", f"use only {list(MODALITY_KEYS[kind])}",
                          "modalities", name)
    labels = cfg.get("labels")
    if labels is not None:
        if (not isinstance(labels, list) or not all(isinstance(x, str) and x for x in labels)
                or len(labels) < 2 or len(set(labels)) != len(labels)):
            raise err("labels", "\"labels\" must be a list of at least 2 distinct non-empty strings")
        if cfg["task"] == "binary" and len(labels) != 2:
            raise err("labels", f"a binary task needs exactly 2 labels, got {len(labels)}", 'use "single-label" for more classes')
    split = cfg.setdefault("split", {})
    val, test = (split.get("val", 0.15), split.get("test", 0.15)) if isinstance(split, dict) else (None, None)
    if (not isinstance(split, dict) or set(split) - {"val", "test", "seed"} or not isinstance(split.get("seed", 0), int)
            or not all(isinstance(f, (int, float)) and not isinstance(f, bool) and 0 <= f < 1 for f in (val, test))
            or val + test >= 1):
        raise err("split", f"bad split {split!r}", 'use {"val": 0.15, "test": 0.15, "seed": 0} with val + test < 1')
    return cfg, path, text
