"""INT8 with calibration: onnxruntime static quantization to QDQ graphs, in one of two forms.

- ``form="s8s8"`` (TensorRT): TensorRT's explicit-quantization path wants symmetric int8 (zero
  point 0) for activations and weights, Q/DQ pairs in front of the compute ops, and no ORT-only
  fused ops: hence QInt8 for both, ActivationSymmetric/WeightSymmetric, DedicatedQDQPair, and
  pre-processing limited to shape inference. On x86 CPUs onnxruntime runs int8 x int8 on a slow
  path (3.3-3.7x slower than FP32 on the easy-vqa bundle), so this form is for TensorRT only.
- ``form="u8s8"`` (CPU): asymmetric uint8 activations, symmetric per-channel int8 weights, the
  pair onnxruntime's VNNI/AMX integer kernels multiply. Contrib ops of an ORT-fused graph stay.

``quantize_dynamic_int8`` (calibration-free, uint8 activations quantized per call) is the other
CPU candidate; calibration/int8_cpu.py measures both and picks one per graph. The MatMul/Gemm
that produces the logits is never quantized (the class scores are what parity compares).
"""
from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import numpy as np
import onnx
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      create_calibrator, quantize_static, save_tensors_data)
from onnxruntime.quantization.shape_inference import quant_pre_process

from calibration.compare import INT8_TOLERANCE, Comparison, Tolerance, compare

Form = Literal["s8s8", "u8s8"]
from calibration.ranges import Feed, make_session, run_feeds

Method = Literal["minmax", "entropy", "percentile"]
METHODS: dict[str, CalibrationMethod] = {"minmax": CalibrationMethod.MinMax,
                                         "entropy": CalibrationMethod.Entropy,
                                         "percentile": CalibrationMethod.Percentile}
# Compute ops TensorRT runs in INT8 from QDQ; quantizing elementwise ops mostly costs accuracy.
DEFAULT_OPS = ("MatMul", "Gemm", "Conv")


class FeedReader(CalibrationDataReader):
    """Yields one graph's inputs from the feeds: a pattern graph sees only its modalities, and
    integer inputs (masks, ids) keep their dtype."""

    def __init__(self, model_path: str | Path, feeds: Sequence[Feed]) -> None:
        graph = onnx.load(str(model_path), load_external_data=False).graph
        inits = {i.name for i in graph.initializer}
        self.types = {i.name: onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)
                      for i in graph.input if i.name not in inits}
        missing = sorted(set(self.types) - set(feeds[0])) if feeds else sorted(self.types)
        if missing:
            raise KeyError(f"calibration feeds lack graph inputs {missing}; they have "
                           f"{sorted(feeds[0]) if feeds else []}")
        self.feeds = feeds
        self._it: Iterator[Feed] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        feed = next(self._it, None)
        return None if feed is None else {k: np.asarray(feed[k]).astype(t, copy=False) for k, t in self.types.items()}

    def rewind(self) -> None:
        self._it = iter(self.feeds)


def _entropy_ranges(model: Path, reader: CalibrationDataReader, op_types: Sequence[str] | None, cache: Path,
                    tmp: Path, num_bins: int, num_quantized_bins: int = 128) -> None:
    calibrator = create_calibrator(model, list(op_types) if op_types else None,
                                   augmented_model_path=str(tmp / "augmented.onnx"),
                                   calibrate_method=CalibrationMethod.Entropy,
                                   extra_options={"symmetric": True, "num_bins": num_bins,
                                                  "num_quantized_bins": num_quantized_bins})
    with contextlib.redirect_stdout(io.StringIO()):
        calibrator.collect_data(reader)
        save_tensors_data(calibrator.compute_data(), cache)


def uniform_rows(feeds: Sequence[Feed]) -> list[dict[str, np.ndarray]]:
    """Single-row feeds with every axis >= 1 zero-padded to its max over the feeds.

    ORT's histogram calibrators (entropy, percentile) stack each tensor across batches and fail on
    differing shapes (sequence lengths, a short last batch). Zero padding matches what collate does:
    mask 0 and token id 0 mean padding, so the padded frames are the ones the model ignores."""
    names = list(feeds[0])
    out: list[dict[str, np.ndarray]] = []
    for name in names:
        arrays = [np.asarray(f[name]) for f in feeds]
        shape = np.max([a.shape for a in arrays], axis=0)
        padded = [np.pad(a, [(0, 0)] + [(0, int(m - d)) for d, m in zip(a.shape[1:], shape[1:])]) for a in arrays]
        rows = [r[None] for a in padded for r in a]
        if not out:
            out = [{} for _ in rows]
        for feed, row in zip(out, rows):
            feed[name] = row
    return out


_SHAPE_LOGGER = "onnxruntime.tools.symbolic_shape_infer"


class _DropBroadcastWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("unsupported broadcast between")


@contextlib.contextmanager
def _quiet_broadcast_warnings() -> Iterator[None]:
    """Drop ORT symbolic shape inference's "unsupported broadcast between Min(...) ..." warnings.

    They come from symbolic dims such as Min(max_len, seq + 1) of the audio frame mask, which
    SymPy cannot prove broadcastable; inference keeps going with a fresh symbolic dim, and the
    quantized graph is checked (onnx.checker) and measured against FP32 below, so the warning
    says nothing a user can act on. Scoped to that logger and to this call.
    """
    logger = logging.getLogger(_SHAPE_LOGGER)
    flt = _DropBroadcastWarnings()
    logger.addFilter(flt)
    try:
        yield
    finally:
        logger.removeFilter(flt)


@dataclass
class Int8Report:
    method: str
    per_channel: bool
    tolerance: Tolerance
    agreement: Comparison
    quantized_ops: dict[str, int]  # op type -> nodes reading a DequantizeLinear output
    qdq_nodes: dict[str, int]
    symmetric: bool  # every zero point is 0 and int8
    input_dtypes: dict[str, str]
    sizes: dict[str, int] = field(default_factory=dict)
    precision: str = "int8"
    form: str = "qdq-s8s8"  # qdq-s8s8 (TensorRT) | qdq-u8s8 | dynamic-u8s8 (CPU)
    excluded_nodes: list[str] = field(default_factory=list)
    choice: dict[str, Any] = field(default_factory=dict)  # CPU builds: candidates measured and why this one

    @property
    def comparison(self) -> Comparison:
        return self.agreement

    @property
    def passed(self) -> bool:
        return self.agreement.passes(self.tolerance)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(agreement=self.agreement.to_dict(self.tolerance), tolerance=self.tolerance.to_dict(), passed=self.passed,
                 failures=self.agreement.failures(self.tolerance))
        return d


def inspect_qdq(model: onnx.ModelProto) -> tuple[dict[str, int], dict[str, int], bool]:
    """(quantized op types, Q/DQ counts, symmetric) of a QDQ graph; symmetric = every zero point is 0
    and int8 (int32 for biases, which ORT stores as int32 with zero point 0)."""
    g = model.graph
    dq_out = {n.output[0] for n in g.node if n.op_type == "DequantizeLinear"}
    skip = {"QuantizeLinear", "DequantizeLinear", "Shape"}  # Shape of a DQ output is not quantized compute
    quantized = Counter(n.op_type for n in g.node if n.op_type not in skip and set(n.input) & dq_out)
    counts = Counter(n.op_type for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear"))
    inits = {i.name: i for i in g.initializer}
    zps = [inits[n.input[2]] for n in g.node
           if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2 and n.input[2] in inits]
    symmetric = all(z.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.INT32)
                    and not onnx.numpy_helper.to_array(z).any() for z in zps)
    return dict(quantized), dict(counts), symmetric


def logits_nodes(model: onnx.ModelProto, output: str = "logits") -> list[str]:
    """Names of the MatMul/Gemm nodes that compute ``output`` (walking back over Add/Reshape/...)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    found: list[str] = []
    stack, seen = [output], set()
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type in ("MatMul", "Gemm"):
            found.append(node.name)
        elif node.op_type in ("Add", "Reshape", "Identity", "Squeeze", "Flatten", "Cast"):
            stack.extend(node.input)
    return found


def quantize_int8(fp32_path: str | Path, out_path: str | Path, feeds: Sequence[Feed], *,
                  method: Method = "minmax", per_channel: bool = True, form: Form = "s8s8",
                  op_types: Sequence[str] | None = DEFAULT_OPS, nodes_to_exclude: Sequence[str] = (),
                  percentile: float = 99.999, entropy_bins: int = 512,
                  tolerance: Tolerance = INT8_TOLERANCE) -> Int8Report:
    """Write a QDQ INT8 graph calibrated on `feeds`: ``form`` s8s8 (TensorRT) or u8s8 (CPU).

    op_types=None quantizes every op ORT can; the default keeps to the ops TensorRT runs in INT8.
    The agreement is measured on the same feeds (held-out parity belongs to export.validate).
    """
    if form not in ("s8s8", "u8s8"):
        raise ValueError(f"unknown INT8 form {form!r}; choose 's8s8' (TensorRT) or 'u8s8' (CPU)")
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; choose one of {sorted(METHODS)}")
    if not feeds:
        raise ValueError("quantize_int8 needs at least one calibration feed (got none)")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    symmetric_acts = form == "s8s8"
    extra: dict[str, Any] = {"ActivationSymmetric": symmetric_acts, "WeightSymmetric": True,
                             "DedicatedQDQPair": symmetric_acts, "QDQKeepRemovableActivations": symmetric_acts}
    if not symmetric_acts:
        # An ORT-fused graph has contrib ops ONNX shape inference cannot type; their outputs are float.
        extra["DefaultTensorType"] = onnx.TensorProto.FLOAT
    nodes_to_exclude = [*nodes_to_exclude, *logits_nodes(onnx.load(str(fp32_path), load_external_data=False))]
    if op_types:
        # ORT also puts QDQ on these ops' outputs (logits included): TensorRT does not need it
        # and it costs accuracy; the consumers' own inputs get QDQ where they are quantized.
        extra["OpTypesToExcludeOutputQuantization"] = list(op_types)
    if method == "percentile":
        extra["CalibPercentile"] = percentile
    with tempfile.TemporaryDirectory(prefix="mmedge-int8-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        # Shape inference only: ORT's optimiser could fuse into com.microsoft ops TensorRT lacks.
        src = str(Path(fp32_path).resolve())
        # chdir: when ORT's symbolic inference gives up it dumps sym_shape_infer_temp.onnx into the cwd.
        with contextlib.chdir(tmp), _quiet_broadcast_warnings():
            try:
                quant_pre_process(src, str(pre), skip_optimization=True, skip_symbolic_shape=False)
            except Exception:  # it gives up on e.g. Min(max_len, seq + 1) in audio graphs: ONNX's suffices
                quant_pre_process(src, str(pre), skip_optimization=True, skip_symbolic_shape=True)
        reader = FeedReader(pre, feeds if method == "minmax" else uniform_rows(feeds))
        cache = None
        if method == "entropy":
            # quantize_static gives the entropy calibrator 128 bins for 128 quantized bins, so its
            # threshold search has one candidate (= MinMax). TensorRT uses 2048 bins; ORT's Python
            # KL search is slow there (12 s on a toy graph), so 512 by default.
            cache = Path(tmp) / "ranges.json"
            _entropy_ranges(pre, reader, op_types, cache, Path(tmp), entropy_bins)
        with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print progress
            quantize_static(str(pre), str(out_path), reader, quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=list(op_types) if op_types else None,
                            per_channel=per_channel,
                            activation_type=QuantType.QInt8 if symmetric_acts else QuantType.QUInt8,
                            weight_type=QuantType.QInt8, nodes_to_exclude=list(nodes_to_exclude),
                            calibrate_method=METHODS[method], extra_options=extra,
                            calibration_cache_path=cache)
    model = onnx.load(str(out_path))
    onnx.checker.check_model(str(out_path), full_check=True)
    quantized, counts, symmetric = inspect_qdq(model)
    ref = run_feeds(make_session(fp32_path), feeds)
    got = run_feeds(make_session(out_path), feeds, list(ref[0]))
    return Int8Report(
        form=f"qdq-{form}", method=method, per_channel=per_channel, tolerance=tolerance, agreement=compare(ref, got),
        quantized_ops=quantized, qdq_nodes=counts, symmetric=symmetric,
        input_dtypes={i.name: onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type).name
                      for i in model.graph.input},
        sizes={"fp32_bytes": Path(fp32_path).stat().st_size, "int8_bytes": out_path.stat().st_size},
        excluded_nodes=list(nodes_to_exclude))


def quantize_dynamic_int8(fp32_path: str | Path, out_path: str | Path, feeds: Sequence[Feed], *,
                          per_channel: bool = True, op_types: Sequence[str] = ("MatMul", "Attention"),
                          tolerance: Tolerance = INT8_TOLERANCE) -> Int8Report:
    """Dynamic INT8 (uint8 activations quantized per call, per-channel int8 weights); no calibration.

    On an ORT-fused graph this turns Attention into QAttention and MatMul into MatMulInteger.
    ``feeds`` only measure the agreement with the FP32 graph.
    """
    from onnxruntime.quantization import quantize_dynamic

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    excluded = logits_nodes(onnx.load(str(fp32_path), load_external_data=False))
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # ORT logs "consider pre-processing" on the root logger: not applicable here
    with contextlib.redirect_stdout(io.StringIO()), contextlib.ExitStack() as stack:
        stack.callback(root.setLevel, level)
        quantize_dynamic(str(fp32_path), str(out_path), op_types_to_quantize=list(op_types), per_channel=per_channel,
                         weight_type=QuantType.QInt8, nodes_to_exclude=excluded,
                         extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT})
    model = onnx.load(str(out_path))
    ops = Counter(n.op_type for n in model.graph.node)
    quantized = {k: v for k, v in ops.items() if k in ("QAttention", "MatMulInteger", "DynamicQuantizeMatMul",
                                                       "DynamicQuantizeLinear", "ConvInteger")}
    ref = run_feeds(make_session(fp32_path), feeds)
    got = run_feeds(make_session(out_path), feeds, list(ref[0]))
    return Int8Report(
        form="dynamic-u8s8", method="dynamic", per_channel=per_channel, tolerance=tolerance,
        agreement=compare(ref, got), quantized_ops=quantized, qdq_nodes={}, symmetric=False,
        input_dtypes={i.name: onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type).name
                      for i in model.graph.input},
        sizes={"fp32_bytes": Path(fp32_path).stat().st_size, "int8_bytes": out_path.stat().st_size},
        excluded_nodes=excluded)
