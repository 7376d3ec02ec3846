"""FP16 search and INT8 QDQ calibration on tiny real graphs (a transformer block exported by torch)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from calibration.cli import main as calibrate_main
from calibration.compare import Tolerance
from calibration.errors import PrecisionToleranceError, check_tolerance
from calibration.fp16 import convert_fp16
from calibration.int8 import quantize_int8
from calibration.ranges import FP16_MAX, collect_ranges, make_session, run_feeds

OUTPUTS = ["logits", "probabilities", "fused_embedding"]


class Block(torch.nn.Module):
    """Linear + LayerNorm + masked softmax attention + masked mean pool + head. `spike` adds a
    branch whose values exceed FP16 (x * spike, summed, * 1/spike): harmless in FP32."""

    def __init__(self, d: int = 16, classes: int = 4, spike: float = 0.0) -> None:
        super().__init__()
        self.proj, self.ln = torch.nn.Linear(5, d), torch.nn.LayerNorm(d)
        self.qkv, self.out, self.head = torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d), torch.nn.Linear(d, classes)
        self.spike = spike

    def forward(self, values: torch.Tensor, mask: torch.Tensor):
        x = self.ln(self.proj(values))
        q, k, v = self.qkv(x).chunk(3, -1)
        # finfo.min as the mask fill, as HF attention does: a sentinel, not an FP16 overflow.
        att = ((q @ k.transpose(1, 2)) / 4.0).masked_fill(mask[:, None, :] == 0, torch.finfo(torch.float32).min)
        x = x + self.out(att.softmax(-1) @ v)
        m = mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * m).sum(1) / m.sum(1).clamp(min=1)
        logits = self.head(pooled)
        if self.spike:
            logits = logits + (pooled * self.spike).sum(-1, keepdim=True) * (1.0 / self.spike)
        return logits, logits.softmax(-1), pooled


def export(path: Path, spike: float = 0.0) -> Path:
    torch.manual_seed(0)
    model = Block(spike=spike).eval()
    args = (torch.randn(2, 6, 5), torch.ones(2, 6, dtype=torch.int64))
    axes = {0: "batch", 1: "time"}
    torch.onnx.export(model, args, str(path), input_names=["audio.values", "audio.mask"], output_names=OUTPUTS,
                      opset_version=18, dynamo=False, dynamic_axes={"audio.values": axes, "audio.mask": axes})
    return path


def make_feeds(n: int = 4, batch: int = 8, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    feeds = []
    for i in range(n):
        frames = 6 - i % 2  # sequence length varies across batches, as collated audio does
        mask = np.ones((batch, frames), np.int64)
        mask[: batch // 2, 4:] = 0  # padded sequences, as in real audio batches
        # An extra key, as a build loop passing every modality would: the graph takes its own inputs.
        feeds.append({"audio.values": rng.normal(size=(batch, frames, 5)).astype(np.float32), "audio.mask": mask,
                      "image.pixel_values": np.zeros((batch, 1, 8, 8), np.float32)})
    return feeds


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cal")
    return {"plain": export(d / "plain.onnx"), "spike": export(d / "spike.onnx", spike=1e5)}


def test_calibration_modules_do_not_import_torch():
    code = ("import sys, calibration.fp16, calibration.int8, calibration.cli, calibration.errors; "
            "print(sorted(k for k in ('torch', 'train', 'export') if k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_ranges_cover_every_node_and_see_the_spike(graphs):
    table = collect_ranges(graphs["spike"], make_feeds(2))
    by = table.by_tensor()
    assert by["audio.values"].op_type == "<input>"
    assert {"LayerNormalization", "Softmax", "MatMul"} <= {r.op_type for r in table.ranges}
    over = table.over(FP16_MAX / 2)
    assert {r.op_type for r in over} >= {"Mul", "ReduceSum"}
    assert all(r.absmax >= r.p999 >= 0 for r in table.ranges)
    json.dumps(table.to_dict(), allow_nan=False)  # JSON-able for the bundle report


def test_fp16_round_trip_is_valid_and_agrees(graphs, tmp_path):
    report = convert_fp16(graphs["plain"], tmp_path / "fp16.onnx", make_feeds())
    onnx.checker.check_model(str(tmp_path / "fp16.onnx"), full_check=True)
    assert report.passed and report.kept_fp32 == []
    assert report.sentinels  # the mask fill was seen and deliberately not kept in FP32
    assert report.error_after.outputs["logits"].top1_agreement == 1.0
    assert report.error_after.outputs["logits"].rel < 1e-2
    model = onnx.load(str(tmp_path / "fp16.onnx"))
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    types = {i.name: i.type.tensor_type.elem_type for i in list(model.graph.input) + list(model.graph.output)}
    assert types["audio.values"] == onnx.TensorProto.FLOAT and types["logits"] == onnx.TensorProto.FLOAT
    assert types["audio.mask"] == onnx.TensorProto.INT64
    json.dumps(report.to_dict(), allow_nan=False)


def test_fp16_keeps_overflowing_nodes_in_fp32_and_that_fixes_the_error(graphs, tmp_path):
    report = convert_fp16(graphs["spike"], tmp_path / "fp16.onnx", make_feeds())
    kept = {k.op_type for k in report.kept_fp32 if k.reason == "overflow"}
    assert {"Mul", "ReduceSum"} <= kept
    # The plain conversion breaks the graph (clamped constant, FP16 round trips); the kept one does not.
    before, after = report.error_before.outputs["logits"], report.error_after.outputs["logits"]
    assert before.rel > 0.1 and after.rel < 1e-2, (before, after)
    assert report.passed
    check_tolerance(report)  # no raise
    with pytest.raises(PrecisionToleranceError) as err:
        check_tolerance(type("R", (), {"precision": "fp16", "tolerance": report.tolerance,
                                       "comparison": report.error_before})(), pattern="audio")
    assert "logits" in str(err.value) and "pattern audio" in str(err.value) and "--allow-degraded" in str(err.value)
    assert any("logits" in f for f in err.value.failures)


def test_fp16_can_keep_mask_sentinels_in_fp32_on_request(graphs, tmp_path):
    report = convert_fp16(graphs["plain"], tmp_path / "k.onnx", make_feeds(2), keep_sentinels=True,
                          extra_keep={"LayerNormalization"})
    reasons = {(k.op_type, k.reason) for k in report.kept_fp32}
    assert ("Softmax", "overflow") in reasons and ("LayerNormalization", "requested") in reasons
    assert report.passed


def test_fp16_io_dtype_choice_gives_fp16_float_io(graphs, tmp_path):
    report = convert_fp16(graphs["plain"], tmp_path / "io16.onnx", make_feeds(2), io_dtype="fp16")
    model = onnx.load(str(tmp_path / "io16.onnx"))
    types = {i.name: i.type.tensor_type.elem_type for i in list(model.graph.input) + list(model.graph.output)}
    assert types["audio.values"] == types["logits"] == onnx.TensorProto.FLOAT16
    assert types["audio.mask"] == onnx.TensorProto.INT64
    out = run_feeds(make_session(tmp_path / "io16.onnx"), make_feeds(1))[0]
    assert out["logits"].dtype == np.float16
    assert report.io_dtype == "fp16" and report.passed


def test_fp16_error_search_adds_op_groups_until_it_gives_up(graphs, tmp_path):
    strict = Tolerance(max_rel=1e-9, min_top1=1.0)  # unreachable: forces the greedy search
    report = convert_fp16(graphs["plain"], tmp_path / "s.onnx", make_feeds(2), tolerance=strict, max_rounds=2)
    assert [s["round"] for s in report.search] == [0, 1, 2]
    assert report.search[1]["added_op_type"] and report.search[1]["tried"]
    assert {k.reason for k in report.kept_fp32} == {"error"}
    assert not report.passed
    onnx.checker.check_model(str(tmp_path / "s.onnx"), full_check=True)
    with pytest.raises(PrecisionToleranceError, match="max_rel = "):
        check_tolerance(report)


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_int8_qdq_graph_is_symmetric_runs_and_reports_agreement(graphs, tmp_path, method):
    out = tmp_path / f"{method}.onnx"
    report = quantize_int8(graphs["plain"], out, make_feeds(), method=method)
    model = onnx.load(str(out))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert report.symmetric and report.quantized_ops.get("MatMul", 0) >= 4
    assert report.input_dtypes == {"audio.values": "float32", "audio.mask": "int64"}
    logits = report.agreement.outputs["logits"]
    # An untrained toy model has near-tied logits, so INT8 noise flips some; real av-digits graphs agree >= 0.96.
    assert logits.top1_agreement is not None and logits.top1_agreement >= 0.75 and logits.nonfinite == 0
    assert logits.rel < 0.5
    assert run_feeds(make_session(out), make_feeds(2))[1]["logits"].shape == (8, 4)
    json.dumps(report.to_dict(), allow_nan=False)


def test_int8_rejects_unknown_method_and_missing_inputs(graphs, tmp_path):
    with pytest.raises(ValueError, match="minmax"):
        quantize_int8(graphs["plain"], tmp_path / "x.onnx", make_feeds(1), method="kl")  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="audio.mask"):
        quantize_int8(graphs["plain"], tmp_path / "x.onnx", [{"audio.values": np.zeros((1, 6, 5), np.float32)}])


def test_cli_fp16_then_report(graphs, tmp_path, capsys):
    feeds = tmp_path / "feeds.npz"
    np.savez(feeds, **make_feeds(1, batch=16)[0])  # one array per input, batch axis first
    out = tmp_path / "cli16.onnx"
    assert calibrate_main(["fp16", "--onnx", str(graphs["plain"]), "--feeds", str(feeds), "--out", str(out)]) == 0
    assert out.exists() and Path(f"{out}.report.json").exists()
    capsys.readouterr()
    assert calibrate_main(["report", f"{out}.report.json"]) == 0
    text = capsys.readouterr().out
    assert "fp16" in text and "logits" in text and "kept in FP32: 0" in text


def test_symbolic_shape_broadcast_warning_is_dropped_only_inside_int8_preprocessing(caplog):
    import logging

    from calibration.int8 import _SHAPE_LOGGER, _quiet_broadcast_warnings
    from onnxruntime.tools import symbolic_shape_infer

    assert symbolic_shape_infer.logger.name == _SHAPE_LOGGER  # the logger ORT really writes it to
    log = logging.getLogger(_SHAPE_LOGGER)
    with caplog.at_level(logging.WARNING, logger=_SHAPE_LOGGER):
        with _quiet_broadcast_warnings():
            log.warning("unsupported broadcast between Min(7, audio_seq + 1) audio_seq + 1")
            log.warning("another warning")
        log.warning("unsupported broadcast between a b")
    assert [r.getMessage() for r in caplog.records] == ["another warning", "unsupported broadcast between a b"]
