"""Weights stored once per precision: every graph of a precision refers to one shared file.

With M modalities each encoder appears in 2^(M-1) pattern graphs; inline, a bundle stores it
that many times (221 MB of graphs for 110.6 MB of unique weights on easy-vqa, and a process
that loads two patterns holds both copies). Here each tensor of at least ``MIN_EXTERNAL_BYTES``
is stored once, keyed by the sha256 of (data type, bytes): the exporter names tensors
``val_78`` etc. differently in each graph, so names cannot be the key. Each blob starts at a
multiple of ``ALIGNMENT`` bytes so onnxruntime can map it. Graphs refer to the file by a plain
name beside them (``weights.bin``), the form onnxruntime resolves relative to the graph.

Threshold (``INLINE_BELOW_BYTES``): a precision whose graphs total less than 16 MiB stays
inline. Such a bundle loads in milliseconds either way, and the tiny demo bundle keeps the
one-file-per-graph form its docs show; a pretrained-encoder bundle (MiniLM, ViT: tens of MB
per graph) always crosses it.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from typing import Any

from runtime.manifest import Manifest, SharedWeights, relpath, sha256_file

ALIGNMENT = 64
MIN_EXTERNAL_BYTES = 1024  # smaller tensors (shapes, scales, zero points) stay inline in each graph
INLINE_BELOW_BYTES = 16 * 1024 * 1024
WEIGHTS_FILE = "weights.bin"


@dataclass
class ShareResult:
    weights: SharedWeights
    graph_bytes: dict[Path, int]  # graph file -> its size after moving the weights out


def _raw(tensor: onnx.TensorProto) -> bytes:
    if tensor.HasField("raw_data"):
        return bytes(tensor.raw_data)
    return numpy_helper.to_array(tensor).tobytes()


def _tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """Initializers and Constant-node tensors of the main graph (where exporters put weights)."""
    out = list(model.graph.initializer)
    for node in model.graph.node:
        if node.op_type == "Constant":
            out.extend(a.t for a in node.attribute if a.name == "value" and a.HasField("t"))
    return out


def should_share(graphs: list[Path], mode: str) -> bool:
    """``mode``: "auto" (share at or above INLINE_BELOW_BYTES of graphs), "always" or "never"."""
    if mode not in ("auto", "always", "never"):
        raise ValueError(f"shared weights mode must be auto, always or never, got {mode!r}")
    if mode == "auto":
        return sum(p.stat().st_size for p in graphs) >= INLINE_BELOW_BYTES
    return mode == "always"


def share_weights(bundle_dir: Path, precision: str, graphs: list[Path]) -> ShareResult:
    """Move the weights of ``graphs`` (all in one folder) into ``<folder>/weights.bin``, in place."""
    folders = {p.parent for p in graphs}
    if len(folders) != 1:
        raise ValueError(f"graphs of one precision must share a folder, got {sorted(map(str, folders))}")
    target = next(iter(folders)) / WEIGHTS_FILE
    offsets: dict[bytes, tuple[int, int]] = {}
    referenced = 0
    models = []
    with open(target, "wb") as fh:
        for path in graphs:
            model = onnx.load(str(path))
            for tensor in _tensors(model):
                if tensor.data_location == onnx.TensorProto.EXTERNAL:
                    raise ValueError(f"{path.name}: tensor {tensor.name!r} already refers to external data")
                data = _raw(tensor)
                if len(data) < MIN_EXTERNAL_BYTES:
                    continue
                key = hashlib.sha256(tensor.data_type.to_bytes(4, "little") + data).digest()
                if key not in offsets:
                    pad = -fh.tell() % ALIGNMENT
                    fh.write(b"\0" * pad)
                    offsets[key] = (fh.tell(), len(data))
                    fh.write(data)
                offset, length = offsets[key]
                referenced += length
                _make_external(tensor, offset, length)
            models.append((path, model))
        fh.write(b"\0" * (-fh.tell() % ALIGNMENT))
    sizes = {}
    for path, model in models:
        onnx.save(model, str(path))
        sizes[path] = path.stat().st_size
    entry = SharedWeights(precision, relpath(target, bundle_dir), sha256_file(target), target.stat().st_size,
                          len(offsets), referenced, ALIGNMENT)
    return ShareResult(entry, sizes)


def _make_external(tensor: onnx.TensorProto, offset: int, length: int) -> None:
    for name in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
        tensor.ClearField(name)
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    del tensor.external_data[:]
    for k, v in (("location", WEIGHTS_FILE), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = k, v


def unique_weight_bytes(graphs: list[Path]) -> int:
    """Bytes of the distinct (by content) tensors of >= MIN_EXTERNAL_BYTES over ``graphs`` (inline ones)."""
    seen: dict[bytes, int] = {}
    for path in graphs:
        for tensor in _tensors(onnx.load(str(path))):
            data = _raw(tensor) if tensor.data_location != onnx.TensorProto.EXTERNAL else b""
            if len(data) >= MIN_EXTERNAL_BYTES:
                seen.setdefault(hashlib.sha256(tensor.data_type.to_bytes(4, "little") + data).digest(), len(data))
    return int(np.sum(list(seen.values()), dtype=np.int64)) if seen else 0


def share_bundle_weights(bundle_dir: Path, manifest: Manifest, mode: str) -> None:
    """Store each precision's weights once (when ``mode`` and the size threshold say so), in place.

    Graph entries get their new sha256/size; ``manifest.extra["weights"]`` records per precision the
    inline bytes, the unique weight bytes and, when shared, the file's and the bundle's bytes. The
    build calls this after parity and the .ort copies (those stay self-contained).
    """
    sizes: dict[str, Any] = {}
    for precision in manifest.precisions:
        entries = [g for g in manifest.graphs if g.precision == precision]
        paths = [bundle_dir / g.file for g in entries]
        sizes[precision] = {"inline_graph_bytes": sum(p.stat().st_size for p in paths),
                            "unique_weight_bytes": unique_weight_bytes(paths)}
        if not should_share(paths, mode):
            continue
        result = share_weights(bundle_dir, precision, paths)
        for g, path in zip(entries, paths):
            g.sha256, g.size_bytes = sha256_file(path), result.graph_bytes[path]
        manifest.shared_weights.append(result.weights)
        sizes[precision].update(shared_file_bytes=result.weights.size_bytes,
                                bundle_graph_bytes=result.weights.size_bytes + sum(result.graph_bytes.values()))
    manifest.extra["weights"] = sizes
