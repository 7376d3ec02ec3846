"""Graphs onnxruntime can fuse: LoRA merged at export, one fused Attention per layer, CPU INT8 parity."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from export.build import BuildConfig, build_bundle
from export.fusion import export_copy, fused_op_counts, optimise_graph
from export.onnx import export_pattern, sequence_axes
from export.validate import ort_session
from export_fixtures import tiny
from runtime.manifest import load_manifest
from runtime.patterns import Pattern, all_patterns
from tiny_multimodal import make_dataset, make_samples, specs
from train.encoders import build_encoder, default_encoder_config
from train.methods import DatasetInfo, available_methods, build_method, pattern_inputs
from train.recipes.method import collate_for

torch.set_num_threads(1)
CASES = [(m, p.key) for m in available_methods() for p in all_patterns(sorted(specs(3)))]


def _inputs(model, pattern: Pattern, rows: int = 4, seed: int = 3) -> tuple:
    samples = [s.restricted(pattern) for s in make_samples(model.modalities, rows, seed=seed)]
    return pattern_inputs(collate_for(model)(samples), model.pattern_module(pattern))


@pytest.mark.parametrize(("method", "key"), CASES, ids=[f"{m}-{k}" for m, k in CASES])
def test_export_copy_equals_the_unmerged_branch(method: str, key: str) -> None:
    model, _ = tiny(method, 3)
    branch = model.pattern_module(Pattern.from_key(key)).eval()
    args = _inputs(model, Pattern.from_key(key))
    twin = export_copy(branch)
    assert not any(callable(getattr(m, "merged", None)) for m in twin.module.modules()), "a LoRA layer survived"
    assert twin.attention_layers == len(Pattern.from_key(key))  # one layer per tiny encoder
    if any(n.endswith("lora_B") for n, _ in branch.named_parameters()):
        assert twin.lora_merged > 0
    with torch.no_grad():
        want, got = branch(*args), twin.module(*args)
    for w, g in zip(want, got):
        assert torch.allclose(w, g, atol=1e-5, rtol=0), float((w - g).abs().max())
    # the branch itself is untouched (the copy is what is switched)
    assert callable(getattr(type(next(iter(model.encoders.values()))), "use_fusable_attention"))
    assert not any(getattr(e, "fusable_attention", False) for e in model.encoders.values())


@pytest.fixture(scope="module")
def two_layer_text_image() -> tuple:
    """CMPT over BERT (text, with padding) + ViT (image), 2 layers each, non-trivial LoRA."""
    data = make_dataset(3)
    info = DatasetInfo.from_dataset(data)
    torch.manual_seed(0)
    encoders = {m: build_encoder(info.modalities[m].type,
                                 {**default_encoder_config(info.modalities[m].type, info.modalities[m].preprocess,
                                                           "tiny"), "num_layers": 2}) for m in ("image", "text")}
    sub = DatasetInfo(info.name, info.task, info.labels, {m: info.modalities[m] for m in encoders})
    model = build_method("cmpt", sub, encoders)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.2)
    return model.eval(), data


def test_optimised_graph_has_one_fused_attention_per_layer(two_layer_text_image, tmp_path: Path) -> None:
    model, _ = two_layer_text_image
    pattern = Pattern.from_key("image+text")
    branch = model.pattern_module(pattern).eval()
    args = _inputs(model, pattern, rows=6)
    assert int(args[-1].sum(1).min()) < int(args[-1].shape[1]), "the text batch must contain padding"
    twin = export_copy(branch)
    raw, opt = tmp_path / "raw.onnx", tmp_path / "opt.onnx"
    export_pattern(twin.module, args, raw, dynamic_seq=sequence_axes(model.info.modalities))
    result = optimise_graph(raw, opt, twin.attention_layers)
    counts = fused_op_counts(onnx.load(str(opt)))
    assert twin.attention_layers == 4
    assert counts.get("Attention") == 4 and result.fused_ops == counts and not result.warnings, counts
    softmax = [n.output[0] for n in onnx.load(str(opt)).graph.node if n.op_type == "Softmax"]
    assert softmax == ["probabilities"], f"unfused attention left: {softmax}"
    # same function as the unmerged, stock-attention branch, on other rows with other padding
    other = _inputs(model, pattern, rows=5, seed=11)
    sess = ort_session(opt)
    got = sess.run(None, {n: t.numpy() for n, t in zip(branch.input_names, other)})
    with torch.no_grad():
        want = branch(*other)
    for w, g in zip(want, got):
        np.testing.assert_allclose(g, w.numpy(), atol=1e-4, rtol=0)


def test_a_fusion_that_does_not_fire_is_a_warning(two_layer_text_image, tmp_path: Path) -> None:
    model, _ = two_layer_text_image
    pattern = Pattern.from_key("text")
    branch = model.pattern_module(pattern).eval()  # stock form: LoRA unmerged, Where mask
    export_pattern(branch, _inputs(model, pattern), tmp_path / "raw.onnx",
                   dynamic_seq=sequence_axes(model.info.modalities))
    result = optimise_graph(tmp_path / "raw.onnx", tmp_path / "opt.onnx", expected_attention=2)
    assert result.fused_ops.get("Attention", 0) == 0
    assert result.warnings and "0 of 2 attention layers" in result.warnings[0]


@pytest.mark.parametrize("method", available_methods())
def test_cpu_int8_and_fused_fp32_pass_parity_for_every_pattern(method: str, tmp_path: Path) -> None:
    """Merged-LoRA fused FP32 graphs at the fp32 tolerance, CPU INT8 (uint8 activations) at int8's."""
    model, data = tiny(method, 2)
    cfg = BuildConfig(method=method, precisions="fp32,int8", out=tmp_path / "b", progress=False, placeholders=False,
                      val_samples=12, calib_samples=8,
                      # the TorchScript exporter cannot size srmm's BatchNorm; dynamo (the shipping one) can
                      exporter="dynamo" if method == "srmm" else "legacy",
                      # srmm's untrained tiny branch (L2-normalised features, random head) gives near-tied
                      # probabilities. The margin-aware acceptance passes its confident rows, but on 12 rows
                      # one flipped near tie moves the task metric by 8.3 points, over the 1-point bound
                      # (measured: image int8 -16.7 points): its int8 graphs may be degraded (marked so).
                      allow_degraded=method == "srmm")
    m = load_manifest(build_bundle(cfg, model=model, dataset=data))  # raises ParityError on any failure
    assert len(m.graphs) == 2 * len(all_patterns(model.modalities))
    for g in m.graphs:
        if method == "srmm" and g.precision == "int8":
            assert g.parity["passed"] != g.degraded, g.parity
        else:
            assert g.parity["passed"] and not g.degraded, g.parity
        # One fused attention per present encoder (tiny encoders have one layer), read-only prompts
        # (prompt-vicreg) included: their mask is a key mask, folded into the fusable form.
        fused = g.fused_ops.get("Attention", 0) + g.fused_ops.get("QAttention", 0)
        assert fused == len(Pattern.from_key(g.pattern)), (g.fused_ops, method, m.extra["fusion"][g.pattern])
        if g.precision == "int8":
            assert g.int8_type in ("qdq-u8s8", "dynamic-u8s8")
            choice = g.calibration["choice"]
            assert choice["chosen"] == g.int8_type and set(choice["ratio_to_fp32"]) == {"qdq-u8s8", "dynamic-u8s8"}
            # a candidate onnxruntime refuses to build is recorded with its reason, never silently dropped
            assert all((choice["ratio_to_fp32"][f] is None) == (f in choice["unbuilt"]) for f in choice["ratio_to_fp32"])
            assert not any(i.dtype == "int8" for i in g.inputs)
    assert set(m.extra["fusion"]) == {p.key for p in all_patterns(model.modalities)}
    if method == "cmpt":  # `mmedge runtime info` shows the counts and the INT8 type
        from runtime.runtime_cli import info

        shown = info(tmp_path / "b", "int8", ["cpu"], as_json=True)
        assert shown["fused_ops"] == {f"{g.precision}/{g.pattern}": g.fused_ops for g in m.graphs}
        assert shown["int8_type"] == {g.pattern: g.int8_type for g in m.graphs if g.precision == "int8"}


def test_tensorrt_int8_target_keeps_standard_onnx_and_symmetric_qdq(tmp_path: Path) -> None:
    model, data = tiny("cmpt", 2)
    cfg = BuildConfig(precisions="fp32,int8", int8_target="tensorrt", out=tmp_path / "b", progress=False,
                      placeholders=False, val_samples=12, calib_samples=8, allow_degraded=True, exporter="legacy")
    m = load_manifest(build_bundle(cfg, model=model, dataset=data))
    for g in m.graphs:
        graph = onnx.load(str(tmp_path / "b" / g.file))
        assert not [n for n in graph.graph.node if n.domain == "com.microsoft"], "TensorRT graphs: standard ONNX"
        if g.precision == "int8":
            assert g.int8_type == "qdq-s8s8"
            zps = [i for i in graph.graph.initializer if i.name.endswith("zero_point")]
            assert zps and all(z.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.INT32) for z in zps)
