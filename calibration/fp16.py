"""FP16 with calibration: convert with onnxconverter-common, keeping in FP32 the nodes that need it.

Search (see convert_fp16):
1. ranges of every float tensor on the calibration feeds (calibration.ranges);
2. keep in FP32 every node that reads or writes a tensor beyond FP16_MAX / safety, every
   LayerNormalization / ReduceSumSquare / ReduceL2 whose input squared would overflow, and every
   node consuming a constant the converter would clamp (|c| > max_finite_val);
3. compare with FP32; while the error misses the tolerance, greedily keep in FP32 the op-type
   group whose blocking lowers the error most (usual suspects first on ties).
"""
from __future__ import annotations

import copy
import math
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

import onnx
from onnxconverter_common import float16

from calibration.compare import FP16_TOLERANCE, Comparison, Tolerance, compare
from calibration.ranges import (FP16_MAX, Feed, RangeTable, collect_ranges, initializer_absmax, load_model,
                                make_session, run_feeds)

IoDtype = Literal["fp32", "fp16"]
# NVIDIA/TensorRT#2564: normalisation and softmax chains are where FP16 usually breaks.
SUSPECTS = ("LayerNormalization", "Softmax", "Pow", "ReduceMean", "Sqrt", "Div", "ReduceSum", "Exp",
            "Erf", "Sub", "Add", "Mul", "Reciprocal")
SQUARING_OPS = {"LayerNormalization", "ReduceSumSquare", "ReduceL2", "RMSNormalization",
                "SimplifiedLayerNormalization"}
NOT_A_GROUP = {"Constant", "Shape", "Cast", "Gather", "Unsqueeze", "Squeeze", "Reshape", "Concat",
               "Slice", "Transpose", "Identity", "Expand", "ConstantOfShape", "Range", "Equal", "Where"}
MAX_FINITE = 1e4  # onnxconverter-common's clamp for constants; keep its default headroom
SENTINEL = 1e30  # |x| this large is a masking sentinel (finfo.min), not a value


@dataclass
class KeptNode:
    node: str
    op_type: str
    reason: str  # "overflow", "constant", "requested", "error"
    detail: str = ""


@dataclass
class Fp16Report:
    io_dtype: str
    tolerance: Tolerance
    kept_fp32: list[KeptNode]
    error_before: Comparison  # plain conversion, nothing kept in FP32
    error_after: Comparison
    ranges: RangeTable
    search: list[dict[str, Any]] = field(default_factory=list)
    sentinels: list[str] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)
    op_types: dict[str, int] = field(default_factory=dict)
    precision: str = "fp16"

    @property
    def comparison(self) -> Comparison:
        return self.error_after

    @property
    def passed(self) -> bool:
        return self.error_after.passes(self.tolerance)

    def to_dict(self, full_ranges: bool = True) -> dict[str, Any]:
        return {
            "precision": self.precision, "io_dtype": self.io_dtype, "tolerance": self.tolerance.to_dict(),
            "passed": self.passed, "failures": self.error_after.failures(self.tolerance),
            "kept_fp32": [asdict(k) for k in self.kept_fp32],
            "kept_fp32_op_types": dict(Counter(k.op_type for k in self.kept_fp32)),
            "error_before": self.error_before.to_dict(self.tolerance),
            "error_after": self.error_after.to_dict(self.tolerance),
            "search": self.search, "sentinels": self.sentinels, "sizes": self.sizes, "op_types": self.op_types,
            "ranges_summary": self.ranges.summary(),
            **({"ranges": self.ranges.to_dict()["ranges"]} if full_ranges else {}),
        }


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy where every node has a unique name (the block list is by name), and every graph
    output that other nodes also read goes through an Identity: with keep_io_types the converter
    casts such an output to FP32 in place and its FP16 consumers then get FP32 (ORT refuses)."""
    out = copy.deepcopy(model)
    outputs = {o.name for o in out.graph.output}
    read = {i for n in out.graph.node for i in n.input}
    for name in sorted(outputs & read):
        inner = f"{name}__inner"
        for node in out.graph.node:
            node.output[:] = [inner if o == name else o for o in node.output]
            node.input[:] = [inner if i == name else i for i in node.input]
        out.graph.node.append(onnx.helper.make_node("Identity", [inner], [name], name=f"{name}__output"))
    seen: set[str] = set()
    for i, node in enumerate(out.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)
    return out


def convert(model: onnx.ModelProto, keep: Iterable[str], io_dtype: IoDtype = "fp32") -> onnx.ModelProto:
    """One conversion; `keep` = node names left in FP32 (Casts are inserted around them)."""
    keep = set(keep)
    # The converter leaves Cast(to=FLOAT) as is (e.g. a mask cast to the activations' dtype),
    # while typing its output float16: ORT then refuses the graph. Retarget those Casts.
    to_float = {n.name for n in model.graph.node if n.op_type == "Cast" and n.name not in keep
                and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT for a in n.attribute)}
    # The converter's own Cast cleanup crashes when an exported Cast feeds several nodes
    # ('list' object has no attribute 'input'); skip it and do ours (_drop_fp16_round_trips).
    cleanup = float16.remove_unnecessary_cast_node
    float16.remove_unnecessary_cast_node = lambda graph: None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # clamping notes; flag_nodes reports what matters
            out = float16.convert_float_to_float16(
                copy.deepcopy(model), keep_io_types=(io_dtype == "fp32"), node_block_list=sorted(keep),
                max_finite_val=MAX_FINITE)
    finally:
        float16.remove_unnecessary_cast_node = cleanup
    for node in out.graph.node:
        if node.name in to_float:
            for a in node.attribute:
                if a.name == "to":
                    a.i = onnx.TensorProto.FLOAT16
    _drop_fp16_round_trips(out.graph)
    return out


def _finite(x: float) -> float | None:
    """Scores for the JSON report: strict JSON has no Infinity (None = non-finite outputs)."""
    return x if math.isfinite(x) else None


def _cast_to(node: onnx.NodeProto) -> int | None:
    return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None


def _drop_fp16_round_trips(graph: onnx.GraphProto) -> None:
    """Between two FP32-kept nodes the converter leaves Cast(->fp16) -> Cast(->fp32): the very
    overflow we kept them for happens in that Cast. Feed the FP32 Casts from the source instead."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    outputs = {o.name for o in graph.output}
    dead = []
    for node in graph.node:
        if _cast_to(node) != onnx.TensorProto.FLOAT16 or node.output[0] in outputs:
            continue
        cons = consumers.get(node.output[0], [])
        if cons and all(_cast_to(c) == onnx.TensorProto.FLOAT for c in cons):
            for c in cons:
                c.input[0] = node.input[0]
            dead.append(node)
    for node in dead:
        graph.node.remove(node)


def sentinel_tensors(ranges: RangeTable) -> list[str]:
    """Tensors carrying attention-mask sentinels (torch.finfo(float32).min and the sums with it)."""
    return [r.tensor for r in ranges.ranges if r.absmax >= SENTINEL]


def flag_nodes(model: onnx.ModelProto, ranges: RangeTable, *, safety: float = 2.0,
               keep_sentinels: bool = False) -> list[KeptNode]:
    """Nodes that must stay FP32 from the ranges alone: overflow, squared overflow, clamped constants.

    Mask sentinels (|x| >= 1e30: HF's `where(mask, 0, finfo.min)`) are not overflow: the converter
    clamps the constant to -1e4, which still zeroes the softmax, as FP16 HF models do. Keeping
    them would pin every attention Add+Softmax to FP32; the error check still covers them."""
    limit = FP16_MAX / safety
    by_tensor = ranges.by_tensor()
    skip = set() if keep_sentinels else set(sentinel_tensors(ranges))
    consts = {k: v for k, v in initializer_absmax(model).items()
              if v > MAX_FINITE and k not in skip and (keep_sentinels or v < SENTINEL)}
    kept: list[KeptNode] = []
    for node in model.graph.node:
        reason = ""
        for t in list(node.input) + list(node.output):
            r = by_tensor.get(t)
            if r is not None and t not in skip and (r.absmax > limit or r.nonfinite):
                reason = f"{t}: absmax {r.absmax:.4g} > {limit:.4g}" + (f", {r.nonfinite} non-finite" if r.nonfinite else "")
                break
        if reason:
            kept.append(KeptNode(node.name, node.op_type, "overflow", reason))
            continue
        if node.op_type in SQUARING_OPS and node.input and (r := by_tensor.get(node.input[0])) and r.absmax ** 2 > limit:
            kept.append(KeptNode(node.name, node.op_type, "overflow", f"{node.input[0]}^2: {r.absmax ** 2:.4g} > {limit:.4g}"))
            continue
        # A Constant node's own value is clamped too unless the node itself stays FP32.
        big = [t for t in list(node.input) + (list(node.output) if node.op_type == "Constant" else []) if t in consts]
        if big:
            kept.append(KeptNode(node.name, node.op_type, "constant",
                                 f"{big[0]}: |c| {consts[big[0]]:.4g} > {MAX_FINITE:g} would be clamped"))
    return kept


def _evaluate(model: onnx.ModelProto, keep: Iterable[str], io_dtype: IoDtype, feeds: Sequence[Feed],
              ref: list[dict]) -> tuple[onnx.ModelProto, Comparison]:
    converted = convert(model, keep, io_dtype)
    sess = make_session(converted)
    return converted, compare(ref, run_feeds(sess, feeds, list(ref[0])))


def convert_fp16(fp32_path: str | Path, out_path: str | Path, feeds: Sequence[Feed], *,
                 tolerance: Tolerance = FP16_TOLERANCE, io_dtype: IoDtype = "fp32",
                 extra_keep: set[str] | frozenset[str] = frozenset(), safety: float = 2.0,
                 max_rounds: int = 8, keep_sentinels: bool = False) -> Fp16Report:
    """Write a mixed-precision FP16 graph to out_path and return its report.

    io_dtype "fp32" keeps float inputs/outputs FP32 (simple hosts); "fp16" makes them float16
    (GPU pipelines). Integer inputs (masks, ids) stay int64 either way. extra_keep: node names
    or op types to keep in FP32 regardless. The report says whether the tolerance was met;
    call calibration.errors.check_tolerance(report) to turn a miss into a typed error.
    """
    if io_dtype not in ("fp32", "fp16"):
        raise ValueError(f"io_dtype must be 'fp32' or 'fp16', got {io_dtype!r}")
    model = name_nodes(load_model(fp32_path))
    ranges = collect_ranges(model, feeds)
    ref = run_feeds(make_session(model), feeds)
    kept = flag_nodes(model, ranges, safety=safety, keep_sentinels=keep_sentinels)
    kept += [KeptNode(n.name, n.op_type, "requested") for n in model.graph.node
             if (n.name in extra_keep or n.op_type in extra_keep) and n.name not in {k.node for k in kept}]

    _, before = _evaluate(model, [], io_dtype, feeds, ref)
    best, after = _evaluate(model, [k.node for k in kept], io_dtype, feeds, ref)
    search: list[dict[str, Any]] = [{"round": 0, "kept": len(kept), "score": _finite(after.score()),
                                     "passed": after.passes(tolerance)}]
    float_ops = {r.op_type for r in ranges.ranges} - {"<input>"} - NOT_A_GROUP
    for rnd in range(1, max_rounds + 1):
        if after.passes(tolerance):
            break
        names = {k.node for k in kept}
        groups = sorted({n.op_type for n in model.graph.node if n.name not in names and n.op_type in float_ops},
                        key=lambda op: (SUSPECTS.index(op) if op in SUSPECTS else len(SUSPECTS), op))
        if not groups:
            break
        tried: dict[str, float] = {}
        pick: tuple[float, str, list[str], onnx.ModelProto, Comparison] | None = None
        for op in groups:  # suspects first: a later group must be strictly better to win a tie
            extra = [n.name for n in model.graph.node if n.op_type == op and n.name not in names]
            cand, cmp_ = _evaluate(model, list(names) + extra, io_dtype, feeds, ref)
            tried[op] = cmp_.score()
            if pick is None or tried[op] < pick[0]:
                pick = (tried[op], op, extra, cand, cmp_)  # keep only the best model in memory
        assert pick is not None
        score, op, extra, best, after = pick
        kept += [KeptNode(n, op, "error", f"search round {rnd}") for n in extra]
        search.append({"round": rnd, "added_op_type": op, "nodes": len(extra), "score": _finite(score),
                       "passed": after.passes(tolerance), "tried": {k: _finite(v) for k, v in tried.items()}})

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(best, str(out_path))
    onnx.checker.check_model(str(out_path), full_check=True)
    return Fp16Report(io_dtype=io_dtype, tolerance=tolerance, kept_fp32=kept, error_before=before,
                      error_after=after, ranges=ranges, search=search,
                      sentinels=[] if keep_sentinels else sentinel_tensors(ranges),
                      sizes={"fp32_bytes": Path(fp32_path).stat().st_size, "fp16_bytes": out_path.stat().st_size},
                      op_types=dict(Counter(n.op_type for n in model.graph.node)))
