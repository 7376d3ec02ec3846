"""--ort-format: each .ort copy is parity-checked on its own; the runtime may only use copies that passed."""
from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import export.build as build_mod
import export.bundle_parts as parts
from export.build import BuildConfig, build_bundle
from export_fixtures import tiny
from runtime.cli import main as mmedge
from runtime.manifest import MANIFEST_FILE, Manifest, load_manifest
from test_export_build import QUICK

BAD = ("audio", "fp32")  # the one (pattern, precision) whose .ort copy the fixture corrupts


def _perturbed(src: Path, dst: Path) -> Path:
    """``src`` with every float initializer changed: a graph that still runs but misses FP32 parity."""
    model = onnx.load(str(src))
    for init in model.graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.dtype == np.float32:
            init.CopyFrom(numpy_helper.from_array(arr * 1.5 + 0.05, init.name))
    onnx.save(model, str(dst))
    return dst


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(bundle, build stderr): fp32+int8 with .ort copies; the audio fp32 copy is made from a corrupted graph."""
    model, data = tiny("cmpt", 2)
    root, real = tmp_path_factory.mktemp("ort"), parts.ort_copy

    def ort_copy(src: Path, dst: Path) -> None:
        bad = (src.stem, src.parent.name) == BAD
        real(_perturbed(src, root / "bad.onnx") if bad else src, dst)

    err = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(err):
        mp.setattr(parts, "ort_copy", ort_copy)
        # allow_degraded=False: a failing .ort copy alone must not fail the build
        tol = {**build_mod.DEFAULT_TOLERANCES, "int8": build_mod.Tolerance(min_top1=0.5)}
        cfg = BuildConfig(precisions="fp32,int8", out=root / "b", ort_format=True, tolerances=tol, **QUICK)
        out = build_bundle(cfg, model=model, dataset=data)
    return out, err.getvalue()


def test_every_ort_copy_is_parity_checked_and_round_trips(built: tuple[Path, str]) -> None:
    bundle, _ = built
    m = load_manifest(bundle)
    assert len(m.graphs) == 6
    for g in m.graphs:
        assert g.ort_file == g.file.removesuffix(".onnx") + ".ort" and (bundle / g.ort_file).is_file()
        p = g.ort_parity
        assert (p["pattern"], p["precision"], p["num_samples"]) == (g.pattern, g.precision, 12)
        assert p["tolerance"] == g.parity["tolerance"] and isinstance(p["passed"], bool)
        assert g.usable_ort_file == (g.ort_file if p["passed"] else None)
        if g.precision == "fp32" and (g.pattern, g.precision) != BAD:  # same graph, same numbers
            assert p["passed"] and p["max_abs"]["logits"] < 1e-4 and g.usable_ort_file == g.ort_file
    raw = json.loads((bundle / MANIFEST_FILE).read_text())
    assert all("ort_parity" in g for g in raw["graphs"])
    assert Manifest.from_dict(json.loads(json.dumps(m.to_dict()))) == m


def test_a_failing_ort_copy_is_recorded_not_fatal(built: tuple[Path, str]) -> None:
    bundle, stderr = built
    g = load_manifest(bundle).graph(*BAD)
    assert g.parity["passed"] and not g.degraded  # the .onnx graph is unaffected
    assert not g.ort_parity["passed"] and g.ort_parity["max_abs"]["logits"] > 1e-4
    assert any("max_abs" in f for f in g.ort_parity["failures"])
    assert g.ort_file and g.usable_ort_file is None
    warned = [line for line in stderr.splitlines() if line.startswith("warning: .ort copy")]
    assert any("pattern audio [fp32] failed parity" in line for line in warned), stderr
    assert not any("[fp32]" in line and "pattern audio " not in line for line in warned), stderr


def test_usable_ort_file_needs_a_passed_ort_parity(built: tuple[Path, str]) -> None:
    g = load_manifest(built[0]).graph("image", "fp32")
    assert g.usable_ort_file == "graphs/fp32/image.ort"
    g.ort_parity = {**g.ort_parity, "passed": False}
    assert g.usable_ort_file is None
    g.ort_parity = {"passed": "yes"}  # only a real True counts
    assert g.usable_ort_file is None
    g.ort_parity, g.ort_file = {"passed": True}, None
    assert g.usable_ort_file is None


def test_old_manifest_without_ort_parity_loads_with_unchecked_copies(built: tuple[Path, str], tmp_path: Path) -> None:
    copy = shutil.copytree(built[0], tmp_path / "old")
    data = json.loads((copy / MANIFEST_FILE).read_text())
    for g in data["graphs"]:
        del g["ort_parity"]
    (copy / MANIFEST_FILE).write_text(json.dumps(data))
    m = load_manifest(copy)
    assert all(g.ort_parity == {} and g.ort_file and g.usable_ort_file is None for g in m.graphs)


def test_runtime_info_shows_each_ort_copy(built: tuple[Path, str], capsys: pytest.CaptureFixture) -> None:
    bundle, _ = built
    assert mmedge(["runtime", "info", str(bundle), "--json"]) == 0
    copies = json.loads(capsys.readouterr().out)["ort_copies"]
    assert len(copies) == 6 and copies["fp32/audio"] == "failed" and copies["fp32/image"] == "passed"
    assert mmedge(["runtime", "info", str(bundle)]) == 0
    text = capsys.readouterr().out
    assert "(+.ort, parity failed)" in text and "(+.ort, parity passed)" in text
