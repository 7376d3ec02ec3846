"""Activation ranges: run calibration feeds through an FP32 graph with every float tensor exposed.

Shared by the FP16 search (which nodes would overflow) and the reports. Runs on onnxruntime
CPU with one intra-op thread (the training jobs own the cores); no torch here.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort

from runtime.runners.onnxrt import create_session, session_options

FP16_MAX = 65504.0
Feed = Mapping[str, np.ndarray]

_ORT_DTYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_,
    "tensor(uint8)": np.uint8, "tensor(int8)": np.int8,
}
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}


def load_model(model: str | Path | onnx.ModelProto) -> onnx.ModelProto:
    return model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))


def make_session(model: str | Path | onnx.ModelProto, *, threads: int = 1,
                 optimize: bool = True) -> ort.InferenceSession:
    """A CPU session; `optimize=False` keeps every node as written (ranges must match the graph)."""
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return create_session(src, session_options(threads=threads, optimize=optimize))


def input_feed(session: ort.InferenceSession, feed: Feed) -> dict[str, np.ndarray]:
    """Only this graph's inputs (a pattern graph sees a subset), cast to the dtypes it declares
    (fp16-I/O graphs take float16; masks and ids stay integer)."""
    out: dict[str, np.ndarray] = {}
    for inp in session.get_inputs():
        if inp.name not in feed:
            raise KeyError(f"calibration feed lacks graph input {inp.name!r}; it has {sorted(feed)}. "
                           "Build the feeds from samples of this graph's availability pattern.")
        arr = np.asarray(feed[inp.name])
        out[inp.name] = arr.astype(_ORT_DTYPES.get(inp.type, arr.dtype), copy=False)
    return out


def run_feeds(session: ort.InferenceSession, feeds: Iterable[Feed],
              output_names: Sequence[str] | None = None) -> list[dict[str, np.ndarray]]:
    names = list(output_names) if output_names else [o.name for o in session.get_outputs()]
    return [dict(zip(names, session.run(names, input_feed(session, f)))) for f in feeds]


@dataclass
class TensorRange:
    """Range of one tensor over all feeds. p999 is the max over feeds of the per-feed 99.9th
    percentile of |x| (exact pooled percentiles would need every value in memory)."""
    tensor: str
    node: str
    op_type: str
    min: float
    max: float
    absmax: float
    p999: float
    nonfinite: int = 0


@dataclass
class RangeTable:
    ranges: list[TensorRange] = field(default_factory=list)

    def by_tensor(self) -> dict[str, TensorRange]:
        return {r.tensor: r for r in self.ranges}

    def over(self, limit: float) -> list[TensorRange]:
        return [r for r in self.ranges if r.absmax > limit or r.nonfinite]

    def summary(self, top: int = 10) -> dict[str, Any]:
        worst = sorted(self.ranges, key=lambda r: -r.absmax)[:top]
        return {"tensors": len(self.ranges),
                "absmax": max((r.absmax for r in self.ranges), default=0.0),
                "top_absmax": [asdict(r) for r in worst]}

    def to_dict(self) -> dict[str, Any]:
        return {"ranges": [asdict(r) for r in self.ranges]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RangeTable":
        return cls([TensorRange(**r) for r in data["ranges"]])


def _float_value_infos(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    g = model.graph
    return {v.name: v for v in list(g.value_info) + list(g.output) + list(g.input)
            if v.type.tensor_type.elem_type in _FLOAT_TYPES}


def expose_intermediates(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, tuple[str, str]]]:
    """A copy whose outputs include every float tensor produced by a node (types from shape
    inference). Returns it with tensor -> (node name, op type)."""
    exposed = onnx.shape_inference.infer_shapes(copy.deepcopy(model))
    infos = _float_value_infos(exposed)
    present = {o.name for o in exposed.graph.output}
    producers: dict[str, tuple[str, str]] = {}
    for node in exposed.graph.node:
        for name in node.output:
            if name and name in infos:
                producers[name] = (node.name, node.op_type)
                if name not in present:
                    exposed.graph.output.append(copy.deepcopy(infos[name]))
                    present.add(name)
    for inp in exposed.graph.input:
        if inp.name in infos:
            producers[inp.name] = ("", "<input>")
    return exposed, producers


def _abs_p999(a: np.ndarray) -> float:
    flat = np.abs(a.reshape(-1))
    if flat.size == 0:
        return 0.0
    k = min(flat.size - 1, int(np.ceil(0.999 * (flat.size - 1))))
    return float(np.partition(flat, k)[k])


def collect_ranges(model: str | Path | onnx.ModelProto, feeds: Sequence[Feed], *,
                   threads: int = 1) -> RangeTable:
    """Per-tensor min/max/absmax/p99.9 of every float node output (and float graph input)."""
    if not feeds:
        raise ValueError("collect_ranges needs at least one calibration feed (got none)")
    exposed, producers = expose_intermediates(load_model(model))
    sess = make_session(exposed, threads=threads, optimize=False)
    names = [o.name for o in sess.get_outputs() if o.name in producers]
    acc: dict[str, list[float]] = {}
    for feed in feeds:
        ins = input_feed(sess, feed)
        values = dict(zip(names, sess.run(names, ins)))
        values.update({k: v for k, v in ins.items() if k in producers})
        for name, val in values.items():
            a = np.asarray(val, dtype=np.float64)
            finite = np.isfinite(a)
            bad = int(a.size - finite.sum())
            a = a[finite] if bad else a
            stats = [float(a.min()), float(a.max()), float(np.abs(a).max()), _abs_p999(a), bad] \
                if a.size else [0.0, 0.0, 0.0, 0.0, bad]
            prev = acc.get(name)
            acc[name] = stats if prev is None else [min(prev[0], stats[0]), max(prev[1], stats[1]),
                                                    max(prev[2], stats[2]), max(prev[3], stats[3]),
                                                    prev[4] + stats[4]]
    out = [TensorRange(name, *producers[name], mn, mx, am, p, int(bad))
           for name, (mn, mx, am, p, bad) in acc.items()]
    return RangeTable(out)


def initializer_absmax(model: onnx.ModelProto) -> dict[str, float]:
    """absmax of every float initializer and Constant-node value (the converter clamps these)."""
    out: dict[str, float] = {}
    for init in model.graph.initializer:
        if init.data_type in _FLOAT_TYPES:
            arr = onnx.numpy_helper.to_array(init)
            out[init.name] = float(np.abs(arr).max()) if arr.size else 0.0
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type in _FLOAT_TYPES:
                    arr = onnx.numpy_helper.to_array(attr.t)
                    out[node.output[0]] = float(np.abs(arr).max()) if arr.size else 0.0
    return out
