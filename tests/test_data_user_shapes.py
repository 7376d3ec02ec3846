"""Sequence widths in the user format: declared `channels`/`features`, or fixed by the first file."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from train.data.errors import DataFormatError
from train.data.registry import load_dataset


def write(root: Path, shapes: list[tuple[int, int]], declared: dict | None = None, kind: str = "timeseries") -> Path:
    root.mkdir(parents=True)
    (root / "ts").mkdir()
    lines = []
    for k, shape in enumerate(shapes):
        np.save(root / "ts" / f"{k}.npy", np.random.default_rng(k).normal(0, 1, shape).astype(np.float32))
        lines.append({"id": f"s{k}", "label": "a" if k % 2 else "b", "split": "test" if k >= len(shapes) - 2 else "train",
                      "imu": f"ts/{k}.npy"})
    (root / "dataset.json").write_text(json.dumps({"task": "single-label",
                                                   "modalities": {"imu": {"type": kind, **(declared or {})}}}))
    (root / "samples.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return root


def test_declared_channels_reject_a_transposed_file_by_name_and_shape(tmp_path: Path) -> None:
    # Every file saved (C, T) = (3, 100): with "channels": 3 declared the first one already fails.
    root = write(tmp_path / "d", [(3, 100)] * 6, {"channels": 3})
    with pytest.raises(DataFormatError) as err:
        load_dataset(str(root))
    assert "ts/0.npy" in str(err.value) and "(3, 100)" in str(err.value) and "expected 3" in str(err.value)


def test_declared_channels_accept_good_files(tmp_path: Path) -> None:
    data = load_dataset(str(write(tmp_path / "d", [(100, 3)] * 6, {"channels": 3})))
    assert data.modalities["imu"].preprocess["n_channels"] == 3 and "channels" not in data.modalities["imu"].preprocess


def test_without_the_key_the_first_file_fixes_the_width_and_a_later_one_fails(tmp_path: Path) -> None:
    # Two of five training files have width 4: a most-common rule would take 3 and fail the first file;
    # the first file's width (4) decides, and the first 3-wide file is the error, named with its shape.
    root = write(tmp_path / "d", [(20, 4), (20, 3), (20, 3), (20, 4), (20, 3), (20, 4), (20, 4)])
    with pytest.raises(DataFormatError) as err:
        load_dataset(str(root))
    assert "ts/1.npy" in str(err.value) and "(20, 3)" in str(err.value) and "expected 4" in str(err.value)


def test_a_first_file_with_fewer_frames_than_channels_is_flagged(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                                                  ) -> None:
    with caplog.at_level(logging.WARNING):
        load_dataset(str(write(tmp_path / "d", [(3, 100)] * 6)))
    assert "fewer frames than channels" in caplog.text and "ts/0.npy" in caplog.text


def test_audio_features_alias(tmp_path: Path) -> None:
    root = write(tmp_path / "d", [(30, 13)] * 6, {"features": 13}, kind="audio")
    assert load_dataset(str(root)).modalities["imu"].preprocess["n_features"] == 13
