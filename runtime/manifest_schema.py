"""The manifest's schema, checked before anything uses a field: types, ranges and cross-references.

``check(data)`` raises ``BundleIntegrityError`` naming the field (``graphs[2].inputs[0].dtype``)
for anything a hand edit or corruption could produce; a manifest that passes can be turned
into dataclasses and used without further type checks. Fields this file does not know are
left to ``Manifest.from_dict`` (which refuses unknown top-level keys), so new optional
fields only need a line here when they need a check.

Ranges bound what the runtime allocates from manifest values alone (warm-up feeds are
``max_frames``/``max_length`` long): a hand-edited ``max_frames: 10**12`` is refused, not
attempted.
"""
from __future__ import annotations

import math
import re
from typing import Any

from runtime.errors import BundleIntegrityError
from runtime.preprocess_base import SEQUENCE_POLICIES

MODALITY_TYPES = ("image", "text", "audio", "timeseries")
DTYPES = ("float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool")
MAX_SEQ = 1 << 20  # max_frames / max_length
MAX_DIM = 1 << 20  # one fixed tensor axis
MAX_ELEMENTS = 1 << 26  # fixed axes of one tensor together (256 MiB of float32)
MAX_IMAGE_SIDE = 16384
MAX_RANK = 8
_HEX64 = re.compile(r"[0-9a-f]{64}")
# preprocess keys that size arrays: each a positive int up to its bound
_SIZES = {"max_frames": MAX_SEQ, "max_length": MAX_SEQ, "n_features": 1 << 16, "n_channels": 1 << 16,
          "channels": 4, "sample_rate": 1 << 20}


def _fail(where: str, problem: str) -> BundleIntegrityError:
    return BundleIntegrityError(f"malformed manifest: {where} {problem}; the bundle was hand-edited or corrupted: "
                                "re-export it (`mmedge export build ...`)", path=where)


def _type(value: Any, types: type | tuple[type, ...], where: str) -> Any:
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise _fail(where, f"must be {_names(types)}, got a bool")
    if not isinstance(value, types):
        raise _fail(where, f"must be {_names(types)}, got {type(value).__name__}")
    return value


def _names(types: type | tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))


def _int(value: Any, where: str, lo: int, hi: int) -> int:
    _type(value, int, where)
    if not lo <= value <= hi:
        raise _fail(where, f"must be in [{lo}, {hi}], got {value}")
    return value


def _str(value: Any, where: str, *, choices: tuple[str, ...] | None = None, nonempty: bool = True) -> str:
    _type(value, str, where)
    if nonempty and not value:
        raise _fail(where, "must be a non-empty string")
    if choices is not None and value not in choices:
        raise _fail(where, f"must be one of {list(choices)}, got {value!r}")
    return value


def _tensor(t: Any, where: str) -> None:
    _type(t, dict, where)
    _str(t.get("name"), f"{where}.name")
    _str(t.get("dtype"), f"{where}.dtype", choices=DTYPES)
    shape = _type(t.get("shape"), list, f"{where}.shape")
    if len(shape) > MAX_RANK:
        raise _fail(f"{where}.shape", f"has rank {len(shape)} > {MAX_RANK}")
    elements = 1
    for i, d in enumerate(shape):
        _type(d, (int, str), f"{where}.shape[{i}]")
        if isinstance(d, int):
            elements *= _int(d, f"{where}.shape[{i}]", 1, MAX_DIM)
        elif not d:
            raise _fail(f"{where}.shape[{i}]", "must be a positive int or a non-empty axis name")
    if elements > MAX_ELEMENTS:
        raise _fail(f"{where}.shape", f"has {elements} elements in its fixed axes (> {MAX_ELEMENTS})")


def _tensors(value: Any, where: str) -> list[dict[str, Any]]:
    _type(value, list, where)
    for i, t in enumerate(value):
        _tensor(t, f"{where}[{i}]")
    return value


def _preprocess(p: Any, where: str) -> None:
    _type(p, dict, where)
    _str(p.get("type"), f"{where}.type")
    for key, hi in _SIZES.items():
        if key in p and p[key] is not None:
            _int(p[key], f"{where}.{key}", 1, hi)
    if "sequence_policy" in p:  # absent: "truncate" (runtime.modality_spec)
        _str(p["sequence_policy"], f"{where}.sequence_policy", choices=SEQUENCE_POLICIES)
    if "size" in p:
        size = _type(p["size"], list, f"{where}.size")
        if len(size) != 2:
            raise _fail(f"{where}.size", f"must be [H, W], got {len(size)} entries")
        for i, s in enumerate(size):
            _int(s, f"{where}.size[{i}]", 1, MAX_IMAGE_SIDE)


def _input_range(r: Any, where: str) -> None:
    _type(r, dict, where)
    for name, pair in r.items():
        w = f"{where}[{name!r}]"
        _type(pair, list, w)
        if len(pair) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                     for v in pair) or pair[0] > pair[1]:
            raise _fail(w, f"must be [low, high], finite numbers with low <= high, got {pair!r}")


def _modalities(mods: Any) -> None:
    _type(mods, dict, "modalities")
    if not mods:
        raise _fail("modalities", "is empty")
    for name, e in mods.items():
        where = f"modalities[{name!r}]"
        _str(name, f"{where} (its key)")
        if "+" in name:
            raise _fail(where, "a modality name must not contain '+' (the pattern-key separator)")
        _type(e, dict, where)
        if e.get("name") != name:
            raise _fail(f"{where}.name", f"must equal its key {name!r}, got {e.get('name')!r}")
        _str(e.get("type"), f"{where}.type", choices=MODALITY_TYPES)
        _tensors(e.get("inputs"), f"{where}.inputs")
        _preprocess(e.get("preprocess"), f"{where}.preprocess")
        if e.get("input_range") is not None:
            _input_range(e["input_range"], f"{where}.input_range")


def _opt(value: Any, types: type | tuple[type, ...], where: str) -> None:
    if value is not None:
        _type(value, types, where)


def _graph(g: Any, where: str, modalities: dict[str, Any], n_labels: int, precisions: tuple[str, ...]) -> tuple:
    from runtime.patterns import Pattern

    _type(g, dict, where)
    key = _str(g.get("pattern"), f"{where}.pattern")
    try:
        pattern = Pattern.from_key(key)
    except (ValueError, TypeError) as exc:
        raise _fail(f"{where}.pattern", f"is not a pattern key: {exc}") from None
    unknown = sorted(set(pattern) - set(modalities))
    if unknown:
        raise _fail(f"{where}.pattern", f"{key!r} names {unknown}, which are not modalities of this bundle "
                                        f"({sorted(modalities)})")
    try:
        return key, _graph_fields(g, where, n_labels, precisions)
    except BundleIntegrityError as err:
        err.pattern = key  # which branch the bad entry belongs to
        raise


def _graph_fields(g: dict[str, Any], where: str, n_labels: int, precisions: tuple[str, ...]) -> str:
    precision = _str(g.get("precision"), f"{where}.precision", choices=precisions)
    _str(g.get("file"), f"{where}.file")
    sha = _str(g.get("sha256"), f"{where}.sha256")
    if not _HEX64.fullmatch(sha):
        raise _fail(f"{where}.sha256", "must be 64 lowercase hex digits")
    _int(g.get("size_bytes"), f"{where}.size_bytes", 0, 1 << 48)
    _tensors(g.get("inputs"), f"{where}.inputs")
    outputs = _tensors(g.get("outputs"), f"{where}.outputs")
    for o in outputs:  # a head wider or narrower than the label list would index past it at predict time
        width = o["shape"][-1] if o["shape"] else None
        if o["name"] in ("logits", "probabilities", "probs") and isinstance(width, int) and width != n_labels:
            raise _fail(f"{where}.outputs", f"{o['name']!r} has {o['shape'][-1]} classes but labels has "
                                                f"{n_labels}")
    for k, types in (("parity", dict), ("ort_parity", dict)):
        if k in g:
            _type(g[k], types, f"{where}.{k}")
    _opt(g.get("calibration"), dict, f"{where}.calibration")
    if "degraded" in g:
        _type(g["degraded"], bool, f"{where}.degraded")
    _opt(g.get("export_time_s"), (int, float), f"{where}.export_time_s")
    _opt(g.get("ort_file"), str, f"{where}.ort_file")
    _opt(g.get("ort_sha256"), str, f"{where}.ort_sha256")
    if g.get("ort_file") is not None and not _HEX64.fullmatch(str(g.get("ort_sha256"))):
        raise _fail(f"{where}.ort_sha256", "must be 64 lowercase hex digits when ort_file is set")
    return precision


def check(data: Any, precisions: tuple[str, ...]) -> None:
    """Raise BundleIntegrityError unless ``data`` (parsed manifest.json) follows the schema."""
    _type(data, dict, "the manifest")
    for k in ("method", "dataset", "task"):
        _str(data.get(k), k)
    labels = _type(data.get("labels"), list, "labels")
    if not labels:
        raise _fail("labels", "is empty: a classifier needs at least one label")
    for i, label in enumerate(labels):
        _type(label, str, f"labels[{i}]")
    if len(set(labels)) != len(labels):
        raise _fail("labels", "has duplicates")
    _modalities(data.get("modalities"))
    graphs = _type(data.get("graphs"), list, "graphs")
    if not graphs:
        raise _fail("graphs", "is empty")
    seen: set[tuple] = set()
    for i, g in enumerate(graphs):
        ident = _graph(g, f"graphs[{i}]", data["modalities"], len(labels), precisions)
        if ident in seen:
            raise _fail(f"graphs[{i}]", f"repeats pattern {ident[0]!r} at {ident[1]!r}")
        seen.add(ident)
    for i, g in enumerate(_type(data.get("baselines", []), list, "baselines")):
        _graph(g, f"baselines[{i}]", data["modalities"], len(labels), precisions)
    files = _type(data.get("files", {}), dict, "files")
    for rel, digest in files.items():
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            raise _fail(f"files[{rel!r}]", "must be a sha256 (64 lowercase hex digits)")
    for k in ("placeholders", "tools", "extra"):
        _type(data.get(k, {}), dict, k)
    _type(data.get("created", ""), str, "created")
