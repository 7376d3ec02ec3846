"""What the runtime checks about a graph: the bytes it serves, the metadata inside it, and whose
fault NaN/Inf outputs are.

- ``read_verified``: a session is built from bytes hashed right here against the manifest, never
  from a second read of the path, so a file replaced after ``Runtime.load`` (``lazy``) is refused.
- ``check_metadata``: the exporter writes ``mmedge.pattern`` / ``mmedge.precision`` into each
  graph's ONNX ``metadata_props``; a graph that names another pattern or precision than its
  manifest entry was swapped (with its sha256 entry, which the checksum alone cannot catch).
- ``check_io``: the graph's real inputs/outputs (names, dtypes, fixed axes) must be what the manifest
  says, so feeds built from the manifest fit the graph.
- ``blame_input``: NaN/Inf outputs on feeds outside the export's calibration range are the
  input's typed error (``InputOutOfRange``), not an ``InferenceError``.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from runtime.errors import BundleIntegrityError, InputOutOfRange, RuntimeInputError
from runtime.manifest import GraphEntry
from runtime.patterns import feed_modality

PATTERN_KEY, PRECISION_KEY = "mmedge.pattern", "mmedge.precision"


def read_verified(path: Path, sha256: str, pattern: str) -> bytes:
    """``path``'s bytes, read once and checked against the manifest's sha256."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise BundleIntegrityError(f"bundle file {Path(path).name} cannot be read ({exc}); re-export the bundle",
                                   pattern=pattern, path=str(path)) from None
    got = hashlib.sha256(data).hexdigest()
    if got != sha256:
        raise BundleIntegrityError(f"bundle file {Path(path).name} has sha256 {got[:12]}... now, the manifest says "
                                   f"{str(sha256)[:12]}...: it was replaced or modified after the bundle was verified;"
                                   " re-export the bundle (or reload it)", pattern=pattern, path=str(path))
    return data


def check_metadata(props: Mapping[str, str], entry: GraphEntry) -> None:
    """The graph's own metadata must agree with its manifest entry (absent keys: exports that predate them)."""
    want = {PATTERN_KEY: entry.pattern, PRECISION_KEY: entry.precision}
    wrong = {k: props[k] for k, v in want.items() if k in props and props[k] != v}
    if wrong:
        raise BundleIntegrityError(f"graph file {entry.file} is listed as pattern {entry.pattern!r} at "
                                   f"{entry.precision!r}, but its own metadata says {wrong}: graph files were "
                                   "swapped or renamed; re-export the bundle", pattern=entry.pattern, path=entry.file)


_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8", "tensor(uint8)": "uint8",
              "tensor(bool)": "bool"}


def check_io(inputs: list, outputs: list, entry: GraphEntry) -> None:
    """``inputs``/``outputs``: the session's NodeArg lists (``.name``, ``.type``, ``.shape``)."""
    have = {a.name: a for a in inputs}
    want = {t.name: t for t in entry.inputs}
    problems = []
    if set(have) != set(want):
        problems.append(f"inputs {sorted(have)} != manifest {sorted(want)}")
    else:
        for name, t in want.items():
            arg = have[name]
            if _ORT_TYPES.get(arg.type, arg.type) != t.dtype:
                problems.append(f"input {name!r} is {arg.type}, manifest says {t.dtype}")
            shape = list(arg.shape)
            if len(shape) != len(t.shape) or any(isinstance(a, int) and isinstance(b, int) and a != b
                                                 for a, b in zip(shape, t.shape)):
                problems.append(f"input {name!r} has shape {shape}, manifest says {t.shape}")
    out_names = {a.name for a in outputs}
    missing = [t.name for t in entry.outputs if t.name not in out_names]
    if missing:
        problems.append(f"outputs {missing} are not outputs of the graph ({sorted(out_names)})")
    if problems:
        raise BundleIntegrityError(f"graph file {entry.file} does not match its manifest entry: {'; '.join(problems)};"
                                   " the manifest was hand-edited: re-export the bundle", pattern=entry.pattern,
                                   path=entry.file)


def blame_input(feeds: Mapping[str, np.ndarray], ranges: Mapping[str, list[float]], pattern: str, precision: str
                ) -> RuntimeInputError | None:
    """After NaN/Inf outputs on feeds that passed ``inputs.check_feed``: an InputOutOfRange when a float
    feed lies outside the export's calibration range (the graph never saw such values), else None."""
    for name, arr in feeds.items():
        r = ranges.get(name)
        if r is None or arr.dtype.kind != "f":
            continue
        low, high = float(arr.min()), float(arr.max())
        if low < r[0] or high > r[1] or not (math.isfinite(low) and math.isfinite(high)):
            modality = feed_modality(name)
            return InputOutOfRange(f"{modality}: input {name!r} spans [{low:.4g}, {high:.4g}], outside the export's "
                                   f"calibration range [{r[0]:.4g}, {r[1]:.4g}], and drove the {precision} graph to "
                                   "NaN/Inf outputs; check the sensor's units and scaling", pattern=pattern,
                                   modality=modality)
    return None
