"""External-data references of an ONNX graph file, read without the ``onnx`` package.

A bundle may store the weights of all graphs of one precision once, in a shared file beside
them (``graphs/<precision>/weights.bin``; see runtime/manifest.py). onnxruntime then reads
every tensor a graph names by ``location``/``offset``/``length``. Before a graph loads, the
runtime checks each reference: it must name a weights file the manifest lists (so it is inside
the bundle and checksummed) and lie within that file. The runtime has no ``onnx`` dependency,
so this walks the protobuf wire format of the few messages that can hold tensors.

Field numbers (onnx.proto3): ModelProto.graph 7, .functions 25; GraphProto.node 1,
.initializer 5, .sparse_initializer 15; NodeProto.attribute 5; AttributeProto.t 5, .g 6,
.tensors 10, .graphs 11, .sparse_tensor 22, .sparse_tensors 23; FunctionProto.node 7;
SparseTensorProto.values 1, .indices 2; TensorProto.name 8, .external_data 13,
.data_location 14 (1 = EXTERNAL); StringStringEntryProto.key 1, .value 2.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from runtime.errors import MMEdgeError


class MalformedGraph(MMEdgeError, ValueError):
    """The file is not a well-formed ONNX protobuf (truncated, or not ONNX at all)."""


@dataclass(frozen=True)
class ExternalRef:
    tensor: str
    location: str | None
    offset: int
    length: int | None


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise MalformedGraph("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise MalformedGraph("varint too long")


def _fields(buf: memoryview) -> Iterator[tuple[int, int, memoryview | int]]:
    """(field number, wire type, value) of one message; length-delimited values as sub-views."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield field, wire, value
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise MalformedGraph("truncated length-delimited field")
            yield field, wire, buf[pos:pos + size]
            pos += size
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 3:  # deprecated group: skip to its end marker (a parser ORT uses would too)
            pos = _skip_group(buf, pos, field)
        elif wire == 4:
            raise MalformedGraph("unexpected end-group marker")
        else:
            raise MalformedGraph(f"unsupported wire type {wire}")
    if pos != len(buf):
        raise MalformedGraph("truncated fixed-width field")


def _skip_group(buf: memoryview, pos: int, field: int) -> int:
    depth = 1
    while depth:
        key, pos = _varint(buf, pos)
        wire = key & 7
        if wire == 0:
            _, pos = _varint(buf, pos)
        elif wire == 2:
            size, pos = _varint(buf, pos)
            pos += size
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 3:
            depth += 1
        elif wire == 4:
            depth -= 1
        else:
            raise MalformedGraph(f"unsupported wire type {wire}")
        if pos > len(buf):
            raise MalformedGraph("truncated group")
    return pos


# message kind -> {field number: child kind}; only the paths that can lead to a TensorProto
_CHILDREN: dict[str, dict[int, str]] = {
    "model": {7: "graph", 25: "function"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "function": {7: "node"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
}


def _tensor_ref(buf: memoryview) -> ExternalRef | None:
    name, external, entries = "", False, {}
    for field, wire, value in _fields(buf):
        if field == 8 and wire == 2:
            name = bytes(value).decode("utf-8", "replace")  # type: ignore[arg-type]
        elif field == 14 and wire == 0:
            external = value == 1
        elif field == 13 and wire == 2:
            kv = {f: bytes(v).decode("utf-8", "replace") for f, w, v in _fields(value) if w == 2}  # type: ignore[arg-type]
            entries[kv.get(1, "")] = kv.get(2, "")
    if not external:
        return None
    try:
        offset = int(entries.get("offset", "0") or 0)
        length = int(entries["length"]) if entries.get("length") else None
    except ValueError:
        raise MalformedGraph(f"tensor {name!r}: non-integer offset/length {entries}") from None
    return ExternalRef(name, entries.get("location"), offset, length)


def external_refs(data: bytes) -> list[ExternalRef]:
    """Every tensor of the serialized ModelProto ``data`` whose bytes live in an external file."""
    out: list[ExternalRef] = []
    stack: list[tuple[str, memoryview]] = [("model", memoryview(data))]
    while stack:
        kind, buf = stack.pop()
        if kind == "tensor":
            ref = _tensor_ref(buf)
            if ref is not None:
                out.append(ref)
            continue
        children = _CHILDREN[kind]
        for field, wire, value in _fields(buf):
            if wire == 2 and field in children:
                stack.append((children[field], value))  # type: ignore[arg-type]
    return out
