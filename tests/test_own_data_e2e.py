"""The first run on the user's own data, end to end through the README's commands.

A generated two-sensor set shaped like a real smartwatch set (accel + gyro, (100, 3) per sample,
4 classes, 40 train / 40 test, its own split and no validation split) goes through
``mmedge train unimodal`` (tiny scratch encoders: the only departure from the default command,
to keep the suite short), ``mmedge train run --method cmpt`` with its defaults,
``python -m export build --method cmpt --dataset DIR`` and ``mmedge runtime predict``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.sensor_fixture import CLASSES, write_sensor_dataset


@pytest.mark.slow
def test_own_two_sensor_data_trains_exports_and_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    from export.cli import main as export_main
    from runtime.runtime_cli import main as runtime_main
    from train.cli import main as train_main

    data = write_sensor_dataset(tmp_path / "watch")
    monkeypatch.chdir(tmp_path)
    for sensor in ("accel", "gyro"):
        assert train_main(["unimodal", "--dataset", str(data), "--modality", sensor, "--size", "tiny"]) == 0
    assert train_main(["run", "--method", "cmpt", "--dataset", str(data)]) == 0
    out = capsys.readouterr().out
    assert "no validation split: using 4 of 40 training samples" in out  # stratified 10%, said aloud
    metrics = json.loads((tmp_path / "runs" / "watch" / "cmpt" / "metrics.json").read_text())
    test = metrics["test_by_pattern"] if "test_by_pattern" in metrics else metrics["test"]
    scores = {p: v["accuracy"] for p, v in test.items()}
    # Chance is 0.25 on 4 balanced classes; 0.6 is ~7 binomial standard errors above it on 40 samples.
    assert set(scores) == {"accel+gyro", "accel", "gyro"} and min(scores.values()) >= 0.6, scores

    assert export_main(["build", "--method", "cmpt", "--dataset", str(data)]) == 0
    bundles = [p for p in (tmp_path / "bundles").iterdir() if (p / "manifest.json").is_file()]
    assert len(bundles) == 1
    lines = [json.loads(x) for x in (data / "samples.jsonl").read_text().splitlines()]
    sample = next(x for x in lines if x["split"] == "test")
    capsys.readouterr()
    assert runtime_main(["predict", str(bundles[0]), "--accel", str(data / sample["accel"]), "--json"]) == 0
    pred = json.loads(capsys.readouterr().out)
    assert pred["pattern"] == "accel" and pred["top"][0][0] in CLASSES
    total = sum(p for _, p in pred["top"])
    assert total == pytest.approx(1.0, abs=1e-4) or len(pred["top"]) < len(CLASSES)
    assert np.isfinite([p for _, p in pred["top"]]).all()
