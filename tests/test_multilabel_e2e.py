"""A multi-label data set end to end: train, export with per-pattern confidence, predict sets.

The generated two-sensor set with three independent attributes (``tests/sensor_fixture.py``:
accel carries ``moving`` and ``raised``, gyro ``turning`` and ``raised``) goes through the README's
commands with tiny encoders: ``train unimodal``, ``train run --method cmpt``, ``export build
--precision fp32 --exporter legacy --no-placeholders`` (the TorchScript exporter and no papers'
placeholder graph: 6 s instead of 39 s; the dynamo path has its own tests). The bundle must carry one sigmoid temperature per pattern (BCE) and conformal
scores that cover every true label, and the runtime must use them: calibrated probabilities are
``sigmoid(logit / T)`` per label, and the set is the labels whose calibrated probability reaches
``1 - q``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tests.sensor_fixture import ATTRIBUTES, write_sensor_dataset


@pytest.mark.slow
def test_multilabel_set_trains_exports_and_predicts_calibrated_sets(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from export.cli import main as export_main
    from runtime import Runtime
    from train.cli import main as train_main

    data = write_sensor_dataset(tmp_path / "attrs", n_train=60, n_test=40, with_val=True, task="multi-label")
    monkeypatch.chdir(tmp_path)
    for sensor in ("accel", "gyro"):
        assert train_main(["unimodal", "--dataset", str(data), "--modality", sensor, "--size", "tiny"]) == 0
    assert train_main(["run", "--method", "cmpt", "--dataset", str(data), "--epochs", "8"]) == 0
    metrics = json.loads((tmp_path / "runs" / "attrs" / "cmpt" / "metrics.json").read_text())
    test = metrics.get("test_by_pattern", metrics.get("test"))
    # Both sensors see every attribute: macro F1 far above a coin flip per label (~0.5 on balanced bits);
    # measured 0.905 (accel 0.857, gyro 0.765: each misses one attribute).
    assert test["accel+gyro"]["f1_macro"] >= 0.8, test

    assert export_main(["build", "--method", "cmpt", "--dataset", str(data), "--precision", "fp32",
                        "--exporter", "legacy", "--no-placeholders"]) == 0
    bundle = next(p for p in (tmp_path / "bundles").iterdir() if (p / "manifest.json").is_file())
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["task"] == "multi-label"

    lines = [json.loads(x) for x in (data / "samples.jsonl").read_text().splitlines()]
    tests = [x for x in lines if x["split"] == "test"]
    with Runtime.load(bundle) as rt:
        for pattern, sensors in (("accel+gyro", ("accel", "gyro")), ("accel", ("accel",)), ("gyro", ("gyro",))):
            section = next(g for g in manifest["graphs"] if g["pattern"] == pattern and g["precision"] == "fp32")
            conf = section["confidence"]
            temp, scores = conf["temperature"], conf["scores"]
            assert math.isfinite(temp) and temp > 0 and conf["n"] == len(scores) == 20  # every val sample
            # The LAC quantile at alpha 0.1 over n = 20 scores is the ceil(21 * 0.9) = 19th smallest.
            q = sorted(scores)[18]
            covered = 0
            for row in tests:
                raw = {m: np.load(data / row[m]) for m in sensors}
                pred = rt.predict(raw)
                assert pred.pattern == pattern
                p = np.clip(pred.probabilities.astype(np.float64), 1e-12, 1 - 1e-12)
                expect = 1 / (1 + np.exp(-(np.log(p) - np.log1p(-p)) / temp))
                np.testing.assert_allclose(pred.calibrated_probabilities, expect, atol=2e-5)
                members = {ATTRIBUTES[j] for j in np.flatnonzero(pred.calibrated_probabilities >= 1 - q)}
                assert set(pred.prediction_set) == members and pred.set_size == len(members)
                covered += set(row["labels"]) <= members
            # Split conformal over exchangeable val/test draws: coverage >= 0.9 in expectation; 40 test
            # samples give a binomial sd of ~0.05, so 0.75 is three sd below.
            assert covered / len(tests) >= 0.75, (pattern, covered)
