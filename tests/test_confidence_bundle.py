"""Confidence in a built bundle: fitted on val, applied by the runtime per pattern, typed errors, old bundles."""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from export.build import BuildConfig, build_bundle
from export_fixtures import tiny
from runtime.confidence import InsufficientCalibrationWarning
from runtime.errors import BundleIntegrityError
from runtime.manifest import load_manifest
from runtime.runtime_cli import main as runtime_main
from runtime.session import Runtime

torch.set_num_threads(1)
VAL_ROWS = 10  # != the 12 test rows parity uses, to tell the splits apart


@pytest.fixture(scope="session")
def calibrated_bundle(tmp_path_factory) -> Path:
    model, data = tiny("cmpt", 2)
    data = dataclasses.replace(data, splits={**data.splits, "val": data.splits["val"][:VAL_ROWS]})
    cfg = BuildConfig(out=tmp_path_factory.mktemp("conf") / "b", progress=False, exporter="legacy",
                      placeholders=False, val_samples=12, calib_samples=8, target_accuracy=0.5)
    return build_bundle(cfg, model=model, dataset=data)


def _samples():
    _, data = tiny("cmpt", 2)
    return data.split("test")


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(np.asarray(x, np.float64) - np.max(x))
    return e / e.sum()


def test_every_graph_is_calibrated_on_the_val_split_with_reports(calibrated_bundle: Path) -> None:
    m = load_manifest(calibrated_bundle)
    assert len(m.graphs) == 3
    for g in m.graphs:
        c = g.confidence
        assert c["n"] == VAL_ROWS and g.parity["num_samples"] == 12  # val for confidence, test for parity
        assert c["score"] == "lac" and c["alpha"] == 0.1 and 0 < c["temperature"] and math.isfinite(c["temperature"])
        assert c["scores"] == sorted(c["scores"])
        assert c["metrics"]["before"]["accuracy"] == c["metrics"]["after"]["accuracy"]
        assert c["metrics"]["after"]["nll"] <= c["metrics"]["before"]["nll"] + 1e-9  # T minimises NLL
        for key in ("report", "diagram"):
            assert c[key] in m.files and (calibrated_bundle / c[key]).stat().st_size > 0
        assert c["diagram"] == f"reports/confidence/fp32/{g.pattern}.png"
        assert c["abstain"]["target_accuracy"] == 0.5


def test_runtime_applies_temperature_sets_and_abstention_for_every_pattern(calibrated_bundle: Path) -> None:
    rt = Runtime.load(calibrated_bundle, providers=["cpu"], intra_op_threads=1)
    labels = rt.labels
    seen = set()
    for i, sample in enumerate(_samples()[:6]):
        for pattern in (("audio", "image"), ("image",), ("audio",)):
            inputs = {m: (sample.inputs[m] if m in pattern else None) for m in rt.modalities}
            p = rt.predict(inputs)
            c = rt.graph(p.pattern).confidence
            seen.add(p.pattern)
            t = c["temperature"]
            cal = p.calibrated_probabilities
            np.testing.assert_allclose(cal, _softmax(p.logits / t), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(p.probabilities, _softmax(p.logits), rtol=1e-5, atol=1e-6)  # the graph's
            q = c["scores"][math.ceil((c["n"] + 1) * 0.9) - 1]  # k-th smallest, by hand
            want = [labels[j] for j in np.argsort(-cal, kind="stable") if cal[j] >= 1 - q]
            assert p.prediction_set == want and p.set_size == len(want)
            assert p.top[0][0] == labels[int(np.argmax(cal))]  # T > 0: same label
            thr = c["abstain"]["threshold"]
            assert p.abstained == (True if thr is None else bool(cal.max() < thr))
            batch = rt.predict_batch([inputs, inputs])  # the batched path does the same
            np.testing.assert_allclose(batch[1].calibrated_probabilities, cal, rtol=1e-5, atol=1e-6)
            assert batch[1].prediction_set == p.prediction_set and batch[0].abstained == p.abstained
    assert seen == {"audio+image", "image", "audio"}


def test_alpha_is_overridable_at_load_and_too_few_samples_warn(calibrated_bundle: Path) -> None:
    sample = {m: v for m, v in _samples()[0].inputs.items()}
    loose = Runtime.load(calibrated_bundle, providers=["cpu"], alpha=0.5).predict(sample)
    default = Runtime.load(calibrated_bundle, providers=["cpu"]).predict(sample)
    assert loose.set_size <= default.set_size
    with pytest.warns(InsufficientCalibrationWarning, match="needs at least 19") as rec:
        strict = Runtime.load(calibrated_bundle, providers=["cpu"], alpha=0.05)  # n=10 < 19
    assert {w.message.pattern for w in rec} == {"audio+image", "audio", "image"}
    assert strict.predict(sample).set_size == 3  # every label: no coverage claimed
    with pytest.raises(ValueError, match="alpha must be in"):
        strict.set_alpha(1.5)


def _edited(bundle: Path, tmp_path: Path, edit) -> Path:
    copy = shutil.copytree(bundle, tmp_path / "edited")
    path = copy / "manifest.json"
    d = json.loads(path.read_text())
    for g in d["graphs"]:
        edit(g)
    path.write_text(json.dumps(d))  # NaN/inf are written as JSON's NaN/Infinity
    return copy


@pytest.mark.parametrize("bad", ["missing", float("nan"), float("inf"), 0.0, -1.0, "2.0"])
def test_missing_or_non_finite_temperature_is_a_typed_error(calibrated_bundle: Path, tmp_path: Path, bad) -> None:
    def edit(g):
        if bad == "missing":
            del g["confidence"]["temperature"]
        else:
            g["confidence"]["temperature"] = bad

    copy = _edited(calibrated_bundle, tmp_path, edit)
    with pytest.raises(BundleIntegrityError, match="temperature") as err:
        load_manifest(copy)
    assert err.value.pattern in {"audio+image", "audio", "image"}
    with pytest.raises(BundleIntegrityError, match="re-export"):
        Runtime.load(copy, providers=["cpu"])


def test_unsorted_or_miscounted_scores_are_a_typed_error(calibrated_bundle: Path, tmp_path: Path) -> None:
    copy = _edited(calibrated_bundle, tmp_path, lambda g: g["confidence"]["scores"].reverse())
    with pytest.raises(BundleIntegrityError, match="ascending list"):
        load_manifest(copy)
    shutil.rmtree(copy)
    copy = _edited(calibrated_bundle, tmp_path, lambda g: g["confidence"]["scores"].pop())
    with pytest.raises(BundleIntegrityError, match="n=10"):
        load_manifest(copy)


def test_bundle_without_confidence_predicts_as_before(calibrated_bundle: Path, tmp_path: Path) -> None:
    old = _edited(calibrated_bundle, tmp_path, lambda g: g.pop("confidence"))
    assert all(g.confidence is None for g in load_manifest(old).graphs)
    rt_old = Runtime.load(old, providers=["cpu"])
    rt_new = Runtime.load(calibrated_bundle, providers=["cpu"])
    for sample in _samples()[:4]:
        for drop in (None, "audio", "image"):
            inputs = {m: (None if m == drop else v) for m, v in sample.inputs.items()}
            p, c = rt_old.predict(inputs), rt_new.predict(inputs)
            assert p.calibrated_probabilities is None and p.prediction_set is None and p.set_size is None
            assert p.abstained is None
            np.testing.assert_array_equal(p.probabilities, c.probabilities)  # unchanged: the graph's own output
            assert p.top == c.top and c.calibrated_probabilities is not None
            assert p.top[0][1] == pytest.approx(float(p.probabilities.max()))


def test_runtime_info_lists_confidence_per_pattern(calibrated_bundle: Path, capsys) -> None:
    assert runtime_main(["info", str(calibrated_bundle), "--providers", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "15 equal-mass bins" in out
    m = load_manifest(calibrated_bundle)
    for g in m.graphs:
        row = next(line for line in out.splitlines() if line.split()[:2] == [g.pattern, "fp32"])
        assert f"{g.confidence['temperature']:.3f}" in row and row.split()[-2] == str(VAL_ROWS)
    assert runtime_main(["info", str(calibrated_bundle), "--providers", "cpu", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info["confidence"]) == {"fp32/audio+image", "fp32/audio", "fp32/image"}
    assert info["confidence"]["fp32/audio"]["n"] == VAL_ROWS


def test_demo_stream_reports_confidence_per_pattern(calibrated_bundle: Path) -> None:
    from train.recipes.demo_stream import confidence_tables, stream

    _, data = tiny("cmpt", 2)
    result = stream(calibrated_bundle, data.split("test"), data.labels, "fp32", drop=0.3, stale=0.0)
    for key, cell in result["patterns"].items():
        c = cell["confidence"]
        assert c["calibrated"] and 0.0 <= c["coverage"] <= 1.0 and 0 <= c["mean_set_size"] <= 3
        assert 0.0 <= c["ece"] <= 1.0 and 0.0 <= c["abstain_coverage"] <= 1.0
    table = confidence_tables([result])
    assert "15 equal-mass bins" in table and all(k in table for k in result["patterns"])


def test_demo_stream_never_fuses_a_previous_samples_reading(calibrated_bundle: Path) -> None:
    """Each streamed prediction is the runtime's prediction on that sample's own delivered sensors."""
    from train.recipes.demo_stream import stream

    _, data = tiny("cmpt", 2)
    samples = data.split("test")
    records: list = []
    result = stream(calibrated_bundle, samples, data.labels, "fp32", drop=0.25, stale=0.3, records=records)
    assert result["events"]["stale"] > 0 and result["events"]["dropped"] > 0
    rt = Runtime.load(calibrated_bundle, precision="fp32", providers=["cpu"], intra_op_threads=1)
    for index, pattern, probs in records:
        present = pattern.split("+")
        direct = rt.predict({m: (samples[index].inputs[m] if m in present else None) for m in rt.modalities})
        assert direct.pattern == pattern
        np.testing.assert_array_equal(direct.probabilities, probs)
