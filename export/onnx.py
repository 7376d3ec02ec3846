"""The only ``torch.onnx.export`` call: one graph per availability-pattern branch.

Exporter choice: the dynamo (``torch.export``) exporter. Both exporters produce correct
graphs for our ViT/BERT wrappers (tests/test_methods.py), and the legacy TorchScript
tracer is about 5-10x faster, but:
- the tracer bakes Python control flow on tensor values into the graph silently (it warns
  "Converting a tensor to a Python boolean might cause the trace to be incorrect" on the
  BERT text branch: a mask check taken for the example input is frozen for every input);
  ``torch.export`` with explicit ``Dim`` s fails loudly instead when a dynamic axis would be
  specialised, so a graph that exports is valid for every batch and sequence length;
- torch >= 2.9 warns that the legacy exporter "will be removed".
``exporter="legacy"`` stays available as an escape hatch (same names and axes).

Axes: every input and output has a dynamic ``batch`` axis; inputs of sequence modalities
(text, audio, timeseries) have a dynamic ``<modality>_seq`` axis on dim 1, one symbol per
modality (a text and an audio length are unrelated). Inputs are named ``<modality>.<input>``
(PatternModule.input_names), outputs OUTPUT_NAMES: logits, probabilities, fused_embedding.
"""
from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from export.errors import BuildError
from runtime.manifest import TensorSpec
from runtime.modality_spec import SPEC_TYPES, placeholder_raw, spec_of
from runtime.patterns import BATCH_AXIS, all_patterns, feed_modality, feed_name, seq_axis
from runtime.preprocess import make_preprocessor

SEQUENCE_TYPES = frozenset(kind for kind, cls in SPEC_TYPES.items() if cls.sequence)
OPSET = 18
Exporter = Literal["dynamo", "legacy"]
_ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
                onnx.TensorProto.INT64: "int64", onnx.TensorProto.INT32: "int32",
                onnx.TensorProto.BOOL: "bool", onnx.TensorProto.INT8: "int8", onnx.TensorProto.UINT8: "uint8"}


@dataclass
class ExportInfo:
    path: Path
    pattern: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    seconds: float
    size_bytes: int
    num_initializer_values: int  # total elements of all initializers (what the graph carries)
    exporter: str


def sequence_axes(modalities: Mapping[str, Any]) -> dict[str, int | None]:
    """modality -> max sequence length (None: unknown) for the sequence-typed modalities.

    ``modalities`` maps a name to a ModalitySpec (``.type``, ``.preprocess``) or to a type string.
    """
    out: dict[str, int | None] = {}
    for m, spec in modalities.items():
        kind = spec if isinstance(spec, str) else spec.type
        if kind in SEQUENCE_TYPES:
            out[m] = None if isinstance(spec, str) else spec_of({**spec.preprocess, "type": kind}).max_length
    return out


def graph_io(model: onnx.ModelProto | str | Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Input and output specs (name, numpy dtype, shape with symbolic axis names) of a graph."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)

    def spec(v: onnx.ValueInfoProto) -> TensorSpec:
        t = v.type.tensor_type
        shape: list[int | str] = [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?")
                                  for d in t.shape.dim]
        return TensorSpec(v.name, _ONNX_DTYPES.get(t.elem_type, str(t.elem_type)), shape)

    inits = {i.name for i in model.graph.initializer}
    return [spec(v) for v in model.graph.input if v.name not in inits], [spec(v) for v in model.graph.output]


def _input_modalities(module: nn.Module, n: int) -> list[str]:
    spec = getattr(module, "input_spec", None)
    if spec is not None:
        return [m for m, _ in spec]
    return [feed_modality(name) for name in module.input_names[:n]]


def export_pattern(module: nn.Module, example_inputs: Sequence[Tensor], path: str | Path, *, opset: int = OPSET,
                   dynamic_seq: Mapping[str, int | None] | set[str] | frozenset[str] = frozenset(),
                   exporter: Exporter = "dynamo", check: bool = True) -> ExportInfo:
    """Export ``module`` (a PatternModule or anything with ``input_names``/``output_names``) to ``path``.

    ``dynamic_seq``: modalities whose inputs get a dynamic axis 1 (a dict may give its max
    length, e.g. the preprocess spec's max_frames). The example batch must have >= 2 rows and
    sequence lengths >= 2, or torch.export specialises those axes to the example's 0/1.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    args = tuple(example_inputs)
    names, outputs = list(module.input_names), list(module.output_names)
    if len(args) != len(names):
        raise ValueError(f"{len(names)} input names {names} but {len(args)} example inputs")
    if args and int(args[0].shape[0]) < 2:
        raise ValueError("export needs an example batch of at least 2 rows (a batch of 1 fixes the batch axis)")
    seq_max = dynamic_seq if isinstance(dynamic_seq, Mapping) else {m: None for m in dynamic_seq}
    mods = _input_modalities(module, len(args))
    started = time.perf_counter()
    kw: dict[str, Any] = dict(input_names=names, output_names=outputs, opset_version=opset)
    # Both exporters are chatty (progress lines, deprecation notes); their output is noise here.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _quiet_loggers():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            batch = torch.export.Dim(BATCH_AXIS, min=1)
            seq = {m: torch.export.Dim(seq_axis(m), min=1, **({"max": int(mx)} if mx else {}))
                   for m, mx in seq_max.items()}
            shapes = tuple({0: batch, **({1: seq[m]} if m in seq and a.dim() >= 2 else {})}
                           for m, a in zip(mods, args))
            with torch.no_grad():
                torch.onnx.export(module, args, str(path), dynamo=True, external_data=False, optimize=True,
                                  dynamic_shapes=(shapes,), **kw)
        elif exporter == "legacy":
            axes = {n: {0: BATCH_AXIS, **({1: seq_axis(m)} if m in seq_max and a.dim() >= 2 else {})}
                    for n, m, a in zip(names, mods, args)}
            axes.update({o: {0: BATCH_AXIS} for o in outputs})
            try:
                with torch.no_grad():
                    torch.onnx.export(module, args, str(path), dynamo=False, dynamic_axes=axes, **kw)
            except Exception as exc:  # noqa: BLE001 - TorchScript tracing refuses some ops with dynamic shapes
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise BuildError(f"the legacy (TorchScript) exporter cannot export {type(module).__name__}: {first}. "
                                 "Fix: use the default exporter (--exporter dynamo)") from exc
        else:
            raise ValueError(f"exporter must be 'dynamo' or 'legacy', got {exporter!r}")
    seconds = time.perf_counter() - started
    sidecar = path.with_name(path.name + ".data")
    if sidecar.exists():  # never ship a graph that needs a sidecar
        raise RuntimeError(f"exporter wrote an external-data sidecar {sidecar}; expected one self-contained file")
    model = _strip_debug_metadata(onnx.load(str(path)))
    onnx.save(model, str(path))
    if check:
        onnx.checker.check_model(str(path), full_check=True)
    ins, outs = graph_io(model)
    if [i.name for i in ins] != names or [o.name for o in outs] != outputs:
        raise RuntimeError(f"exported names {[i.name for i in ins]} -> {[o.name for o in outs]} differ from "
                           f"{names} -> {outputs}")
    for o in outs:  # the dynamo exporter infers symbolic names; make batch explicit everywhere
        if o.shape and not isinstance(o.shape[0], int):
            o.shape[0] = "batch"
    pattern = getattr(getattr(module, "pattern", None), "key", path.stem)
    return ExportInfo(path, pattern, ins, outs, seconds, path.stat().st_size,
                      sum(int(np.prod(i.dims)) for i in model.graph.initializer), exporter)


def _strip_debug_metadata(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop the dynamo exporter's per-node debug strings (fx node, stack trace, class path).

    They were ~40% of a graph's bytes on av-digits and embed source paths: nothing a device needs.
    """
    graphs = [model.graph, *(a.g for n in model.graph.node for a in n.attribute if a.HasField("g"))]
    for g in graphs:
        for item in [*g.node, *g.value_info, *g.input, *g.output]:
            del item.metadata_props[:]
            item.doc_string = ""
    for f in model.functions:
        for n in f.node:
            del n.metadata_props[:]
    return model


@contextlib.contextmanager
def _quiet_loggers() -> Any:
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


# ---- the papers' baseline: the full graph with placeholders (benchmark only) ----------------
def placeholder_inputs(model: Any, batch: int = 3, base_dir: Path | None = None) -> tuple[Tensor, ...]:
    """Preprocessed placeholders of every modality, in the full branch's input order."""
    full = model.pattern_module(all_patterns(model.modalities)[0])
    arrays: dict[str, np.ndarray] = {}
    for m in full.modalities:
        spec = model.info.modalities[m].preprocess
        out = make_preprocessor(spec, base_dir)([placeholder_raw(spec)] * batch)
        arrays.update({feed_name(m, k): v for k, v in out.items()})
    return tuple(torch.from_numpy(np.ascontiguousarray(arrays[n])) for n in full.input_names)


def export_full_with_placeholders(model: Any, path: str | Path, *, exporter: Exporter = "dynamo",
                                  base_dir: Path | None = None) -> ExportInfo:
    """The papers' way, for the benchmark only: every encoder runs, a missing modality gets a placeholder.

    Generic for every method: it is the full-pattern branch, and the host feeds
    ``placeholder_raw`` (through the same preprocessing) for each absent modality. Per-modality
    presence flags are deliberately absent: a model fed placeholders does not know which inputs
    are fake, which is the baseline being measured (compute of all encoders). Its predictions
    are not the product's; only its latency is compared with the per-pattern graphs.
    """
    full = model.pattern_module(all_patterns(model.modalities)[0]).eval()
    args = placeholder_inputs(model, base_dir=base_dir)
    info = export_pattern(full, args, path, dynamic_seq=sequence_axes(model.info.modalities), exporter=exporter)
    return info
