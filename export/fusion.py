"""Graphs that onnxruntime can fuse: the export copy of a branch, and the offline optimisation step.

Why an export copy: the trained branch keeps LoRA unmerged and transformers' stock attention
(what training ran), but onnxruntime's transformer fuser needs plain ``MatMul + Add`` for q/k/v,
an additive ``(1 - keep) * min`` mask, the scale as a ``Div`` and literal head counts. The copy
folds every LoRA update into its base weight (``merged()``) and switches every encoder to the
export-time attention form (``use_fusable_attention()``). Both hooks are found by duck typing,
so export never imports train's modules. Parity of the graph is checked against the *original*
branch, which is what proves the copy is numerically the same function.

Optimisation: ``onnxruntime.transformers.optimizer`` at opt_level 1 (ORT's basic, portable
rewrites first, then the Python fusions). Level 2 applies layout-specific rewrites first that
keep the fuser from matching Attention. The result contains com.microsoft contrib ops
(Attention, SkipLayerNormalization, BiasGelu, ...), which only onnxruntime runs: graphs for
TensorRT are kept as standard ONNX (see build.py).
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from torch import nn

FUSED_OP_TYPES = ("Attention", "MultiHeadAttention", "SkipLayerNormalization", "LayerNormalization", "BiasGelu",
                  "FastGelu", "Gelu", "SkipSimplifiedLayerNormalization", "EmbedLayerNormalization")
OPT_LEVEL = 1


@dataclass
class ExportCopy:
    module: nn.Module
    lora_merged: int  # LoRA layers folded into their base weight
    attention_layers: int  # layers switched to the fusable attention form (= Attention nodes expected)
    unfusable_layers: int = 0  # of those, layers whose mask the fuser cannot express (read-only prefix)


@dataclass
class Optimisation:
    fused_ops: dict[str, int]  # contrib op type -> count in the optimised graph
    expected_attention: int
    opt_level: int = OPT_LEVEL
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"fused_ops": dict(self.fused_ops), "expected_attention": self.expected_attention,
                "opt_level": self.opt_level, "warnings": list(self.warnings)}


def export_copy(module: nn.Module) -> ExportCopy:
    """A deep copy of ``module`` with LoRA merged and every encoder in the fusable attention form."""
    twin = copy.deepcopy(module).eval()
    merged = 0
    for parent in list(twin.modules()):
        for name, child in list(parent.named_children()):
            fold = getattr(child, "merged", None)
            if callable(fold):
                setattr(parent, name, fold())
                merged += 1
    layers = 0
    for sub in list(twin.modules()):
        switch = getattr(sub, "use_fusable_attention", None)
        if callable(switch):
            layers += int(switch())
    return ExportCopy(twin.eval(), merged, layers)


def fused_op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Counts of onnxruntime contrib (com.microsoft) ops plus standard LayerNormalization."""
    counts = Counter(n.op_type for n in model.graph.node
                     if n.domain == "com.microsoft" or n.op_type == "LayerNormalization")
    return dict(sorted(counts.items()))


def split_unsqueezes(model: onnx.ModelProto) -> int:
    """Rewrite each multi-axis ``Unsqueeze`` (constant axes) as a chain of single-axis ones, in place.

    The dynamo exporter's optimiser merges ``keep.unsqueeze(1).unsqueeze(2)`` into one node, but
    the fuser's mask pattern is ``Unsqueeze -> Unsqueeze``. Both forms are standard ONNX and equal.
    """
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    consts = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant"}
    out: list[onnx.NodeProto] = []
    split = 0
    for node in model.graph.node:
        axes = None
        if node.op_type == "Unsqueeze" and node.domain in ("", "ai.onnx") and len(node.input) == 2:
            src = inits.get(node.input[1])
            if src is not None:
                axes = numpy_helper.to_array(src)
            elif node.input[1] in consts:
                axes = numpy_helper.to_array(consts[node.input[1]].attribute[0].t)
        if axes is None or axes.size < 2 or (axes < 0).any():
            out.append(node)
            continue
        current = node.input[0]
        for j, axis in enumerate(sorted(int(a) for a in axes.ravel())):
            name = f"{node.name}_axis{axis}"
            axis_init = numpy_helper.from_array(np.array([axis], dtype=np.int64), f"{name}_axes")
            model.graph.initializer.append(axis_init)
            target = node.output[0] if j == axes.size - 1 else f"{name}_out"
            out.append(onnx.helper.make_node("Unsqueeze", [current, axis_init.name], [target], name=name))
            current = target
        split += 1
    del model.graph.node[:]
    model.graph.node.extend(out)
    used = {i for n in model.graph.node for i in n.input}
    keep = [i for i in model.graph.initializer if i.name in used or i.name in {o.name for o in model.graph.output}]
    if len(keep) != len(model.graph.initializer):
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
    return split


def optimise_graph(src: Path, dst: Path, expected_attention: int) -> Optimisation:
    """Write the ORT-fused form of ``src`` to ``dst`` (may equal ``src``); counts and warnings.

    An expected fusion that did not fire is a warning (the graph is still correct, only slower).
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    model = onnx.load(str(src))
    split_unsqueezes(model)
    onnx.save(model, str(dst))  # optimize_model reads a path (a ModelProto goes through external data)
    options = FusionOptions("bert")
    # A raw 0/1 key mask into Attention: no assumption that padding is at the end.
    options.use_raw_attention_mask(True)
    quiet = logging.getLogger("onnxruntime.transformers")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            opt = optimize_model(str(dst), model_type="bert", num_heads=0, hidden_size=0, opt_level=OPT_LEVEL,
                                 optimization_options=options, use_gpu=False)
    finally:
        quiet.setLevel(level)
    opt.model.graph.name = opt.model.graph.name or "mmedge"
    opt.save_model_to_file(str(dst), use_external_data_format=False)
    counts = fused_op_counts(opt.model)
    warnings = []
    got = counts.get("Attention", 0) + counts.get("MultiHeadAttention", 0)
    if got < expected_attention:
        warnings.append(f"{Path(src).name}: {got} of {expected_attention} attention layers fused into "
                        "Attention; the graph is correct but slower (an export form the fuser does not match)")
    return Optimisation(counts, expected_attention, warnings=warnings)
