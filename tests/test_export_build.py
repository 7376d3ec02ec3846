"""build_bundle end to end on tiny models: 7 patterns, integrity, atomicity, degraded, CLI, TensorRT skip."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import export.build as build_mod
from export.build import BuildConfig, PrecisionStopped, build_bundle
from export.cli import main as cli_main
from runtime.modality_spec import raw_from_recipe
from export.tensorrt import TensorRTUnavailable, _profile_shapes, require_tensorrt
from export.validate import ParityError, Tolerance, ort_session
from export_fixtures import save_run, tiny
from runtime.errors import BundleIntegrityError
from runtime.manifest import load_manifest
from runtime.patterns import all_patterns
from runtime.preprocess import make_preprocessor

torch.set_num_threads(1)
QUICK = dict(progress=False, exporter="legacy", placeholders=False, val_samples=12, calib_samples=8)


@pytest.fixture(scope="module")
def bundle3(tmp_path_factory) -> Path:
    """The shipped path (dynamo exporter) on a 3-modality CMPT: 7 pattern graphs."""
    model, data = tiny("cmpt", 3)
    out = tmp_path_factory.mktemp("b") / "tiny3-cmpt-fp32"
    cfg = BuildConfig(method="cmpt", out=out, progress=False, ort_format=True, placeholders=False, val_samples=12,
                      calib_samples=8)
    return build_bundle(cfg, model=model, dataset=data)


def test_three_modality_cmpt_bundle_has_all_seven_patterns(bundle3: Path) -> None:
    model, _ = tiny("cmpt", 3)
    m = load_manifest(bundle3)
    assert m.patterns("fp32") == [p.key for p in all_patterns(["audio", "image", "text"])]
    assert len(m.graphs) == 7 and not any(g.degraded for g in m.graphs)
    for g in m.graphs:
        assert g.parity["passed"] and g.parity["max_abs"]["logits"] < 1e-4 and g.parity["num_samples"] == 12
        assert g.file == f"graphs/fp32/{g.pattern}.onnx" and g.ort_file == f"graphs/fp32/{g.pattern}.ort"
        assert (bundle3 / g.ort_file).stat().st_size > 0
    assert m.modalities["text"].preprocess["tokenizer_file"] == "preprocess/text/tokenizer.json"
    assert [i.shape for i in m.modalities["text"].inputs] == [["batch", "text_seq"]] * 2
    assert m.labels == list(model.info.labels) and m.method == "cmpt" and "torch" in m.tools
    assert not [p for p in bundle3.parent.iterdir() if ".tmp-" in p.name]


def test_placeholder_baseline_runs_from_the_manifest_alone(tmp_path: Path) -> None:
    model, data = tiny("cmpt", 2)
    bundle = build_bundle(BuildConfig(out=tmp_path / "b", **{**QUICK, "placeholders": True}), model=model, dataset=data)
    m = load_manifest(bundle)
    (base,) = m.baselines
    assert m.placeholders["image"] == {"kind": "zeros", "shape": [8, 8, 1], "dtype": "float32"}
    feeds = {}
    for name, entry in m.modalities.items():  # torch-free: recipe + bundled preprocessing
        raw = raw_from_recipe(m.placeholders[name])
        out = make_preprocessor(entry.preprocess, bundle)([raw, raw])
        feeds.update({f"{name}.{k}": v for k, v in out.items()})
    got = ort_session(bundle / base.file).run(None, feeds)
    full = model.pattern_module(all_patterns(model.modalities)[0])
    with torch.no_grad():
        expected = full(*[torch.from_numpy(feeds[n]) for n in full.input_names])
    np.testing.assert_allclose(got[0], expected[0].numpy(), atol=1e-4)


def test_corrupted_graph_in_a_built_bundle_is_refused(bundle3: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(bundle3, tmp_path / "copy")
    graph = copy / "graphs" / "fp32" / "image.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    with pytest.raises(BundleIntegrityError, match="sha256"):
        load_manifest(copy)


def test_killed_export_leaves_no_loadable_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, data = tiny("cmpt", 2)
    out = tmp_path / "bundle"
    stale = tmp_path / ".bundle.tmp-999999999-x"  # a SIGKILLed build's leftover (dead pid)
    stale.mkdir()
    build_bundle(BuildConfig(out=out, **QUICK), model=model, dataset=data)
    assert not stale.exists(), "stale temp dirs of dead builds are swept"
    before = (out / "manifest.json").read_text()
    real, calls = build_mod.export_pattern, []

    def dying(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed mid-build")
        return real(*args, **kw)

    monkeypatch.setattr(build_mod, "export_pattern", dying)
    with pytest.raises(KeyboardInterrupt):
        build_bundle(BuildConfig(out=out, **QUICK), model=model, dataset=data)
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        build_bundle(BuildConfig(out=tmp_path / "fresh", **QUICK), model=model, dataset=data)
    assert not (tmp_path / "fresh").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no temp dirs left
    assert (out / "manifest.json").read_text() == before  # the previous bundle is untouched
    load_manifest(out)


def test_failing_parity_raises_unless_degraded_allowed(tmp_path: Path) -> None:
    model, data = tiny("late-fusion", 2)
    strict = {"fp32": Tolerance(min_top1=1.01)}  # impossible: every pattern fails
    with pytest.raises(ParityError) as err:
        build_bundle(BuildConfig(method="late-fusion", out=tmp_path / "b", tolerances=strict, **QUICK),
                     model=model, dataset=data)
    # the build stops at the first failing graph (the first pattern's fp32): nothing after it is built
    assert isinstance(err.value, PrecisionStopped) and err.value.failed == "fp32" and err.value.passed == ()
    assert {f.pattern for f in err.value.failures} == {"audio+image"}
    assert "--allow-degraded" in str(err.value) and not (tmp_path / "b").exists()
    out = build_bundle(BuildConfig(method="late-fusion", out=tmp_path / "b", tolerances=strict, allow_degraded=True,
                                   **QUICK), model=model, dataset=data)
    m = load_manifest(out)
    assert all(g.degraded and not g.parity["passed"] and g.parity["failures"] for g in m.graphs)


def test_cli_builds_a_tiny_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import train.data.registry as registry

    model, data = tiny("cmpt", 2)
    run = save_run(model, tmp_path / "run", "tiny2")
    monkeypatch.setattr(registry, "load_dataset", lambda name, *a, **k: data if name == "tiny2" else 1 / 0)
    out = tmp_path / "bundles" / "x"
    rc = cli_main(["build", "--method", "cmpt", "--run", str(run), "--out", str(out), "--exporter", "legacy",
                   "--no-progress", "--no-placeholders", "--calib-samples", "8", "--val-samples", "12"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "audio+image" in text and "max|dlogits|" in text and f"bundle: {out}" in text
    m = load_manifest(out)
    assert m.dataset == "tiny2" and len(m.graphs) == 3 and json.loads((out / "manifest.json").read_text())


def test_build_stops_at_the_first_failing_precision_and_says_what_passed(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    model, data = tiny("late-fusion", 2)
    built: list[str] = []
    convert = build_mod.convert_precision
    monkeypatch.setattr(build_mod, "convert_precision", lambda p, *a, **k: built.append(p) or convert(p, *a, **k))
    strict = {**build_mod.DEFAULT_TOLERANCES, "fp16": Tolerance(min_top1=1.01)}  # fp16 cannot pass
    cfg = BuildConfig(method="late-fusion", precisions="fp32,fp16,int8", out=tmp_path / "b", tolerances=strict,
                      **QUICK)
    with pytest.raises(PrecisionStopped) as err:
        build_bundle(cfg, model=model, dataset=data)
    assert err.value.passed == ("fp32",) and err.value.failed == "fp16"
    assert built == ["fp16"], built  # stopped at the first fp16 graph: no other fp16 graph, no int8 at all
    text = str(err.value)
    assert "Passed for every pattern: fp32; not built: int8" in text and "--precision fp32 " in text
    assert not (tmp_path / "b").exists() and not list(tmp_path.iterdir())  # nothing half-written, no temp dirs


def test_cli_prints_the_commands_that_write_what_passed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys) -> None:
    import train.data.registry as registry

    model, data = tiny("cmpt", 2)
    run = save_run(model, tmp_path / "run", "tiny2")
    monkeypatch.setattr(registry, "load_dataset", lambda name, *a, **k: data)
    monkeypatch.setitem(build_mod.DEFAULT_TOLERANCES, "fp16", Tolerance(min_top1=1.01))
    out = tmp_path / "bundles" / "x"
    argv = ["build", "--run", str(run), "--out", str(out), "--exporter", "legacy", "--no-progress",
            "--no-placeholders", "--no-confidence", "--calib-samples", "8", "--val-samples", "12", "--precision",
            "fp32,fp16"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "parity failed" in err and not out.exists()
    assert ("write the passing precisions: mmedge export build --run " + str(run)) in err
    assert err.count("--precision fp32\n") == 1 and "--precision fp32,fp16 --allow-degraded" in err
    # the first printed command does write a bundle of the passing precision
    first = next(line for line in err.splitlines() if line.startswith("write the passing"))
    assert cli_main(first.split(": ", 1)[1].split()[2:]) == 0
    assert load_manifest(out).precisions == ["fp32"]


def test_cli_tensorrt_without_tensorrt_says_so(tmp_path: Path, capsys) -> None:
    try:
        require_tensorrt()
        pytest.skip("tensorrt is installed here")
    except TensorRTUnavailable:
        pass
    rc = cli_main(["build", "--engine", "tensorrt", "--run", str(tmp_path / "none"), "--no-progress"])
    assert rc == 2 and "TensorRT 10" in capsys.readouterr().err


def test_tensorrt_profiles_follow_symbolic_axes(bundle3: Path) -> None:
    g = load_manifest(bundle3).graph("audio+text", "fp32")
    shapes = _profile_shapes(g, {"audio": 6, "text": 8}, max_batch=16, opt_batch=1)
    assert shapes["audio.values"] == ((1, 1, 5), (1, 6, 5), (16, 6, 5))
    assert shapes["text.input_ids"] == ((1, 1), (1, 8), (16, 8))


@pytest.mark.tensorrt
def test_tensorrt_engine_build(bundle3: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorrt", reason="TensorRT 10 is not installable here (DESIGN.md); runs on GPU machines")
    from export.tensorrt import build_engines

    copy = shutil.copytree(bundle3, tmp_path / "copy")
    note = build_engines(copy, load_manifest(copy))
    assert len(note["engines"]) == 7 and (copy / "engines" / "timing.cache").is_file()


def test_fp16_and_int8_in_one_bundle(tmp_path: Path) -> None:
    model, data = tiny("cmpt", 2)
    cfg = BuildConfig(precisions="fp32,int8,fp16", out=tmp_path / "b", allow_degraded=True, **QUICK)
    m = load_manifest(build_bundle(cfg, model=model, dataset=data))
    assert m.precisions == ["fp32", "fp16", "int8"] and len(m.graphs) == 9
    for g in m.graphs:
        assert g.file == f"graphs/{g.precision}/{g.pattern}.onnx"
        if g.precision == "fp32":
            assert g.calibration is None and not g.degraded
            continue
        assert g.calibration["report"] in m.files  # the full report ships, checksummed
        assert g.parity["top1_agreement"] > 0.5 and g.degraded == (not g.parity["passed"])
        sess = ort_session(tmp_path / "b" / g.file)
        assert [i.name for i in sess.get_inputs()] == [i.name for i in g.inputs]
    assert "kept_fp32_count" in m.graph("audio+image", "fp16").calibration
    assert m.graph("audio", "int8").calibration["report"] == "reports/int8/audio.json"
