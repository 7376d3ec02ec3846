"""`mmedge runtime info|predict` once each (the library functions are tested in test_runtime.py)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from runtime.cli import main as mmedge
from runtime_fixtures import tiny_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_bundle(tmp_path_factory.mktemp("rt"))


def test_info_lists_patterns_inputs_and_providers(bundle: Path, capsys: pytest.CaptureFixture) -> None:
    assert mmedge(["runtime", "info", str(bundle), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["patterns"] == {"fp32": ["audio+image", "audio", "image"]} and out["precisions"] == ["fp32"]
    assert out["inputs"]["audio"]["tensors"][0] == {"name": "audio.values", "dtype": "float32",
                                                    "shape": ["batch", "audio_seq", 5]}
    assert "CPUExecutionProvider" in out["providers_available"]
    assert set(out["providers_in_use"]) == {"fp32/audio+image", "fp32/audio", "fp32/image"}


def test_predict_from_png_and_npy_prints_pattern_top_and_timings(bundle: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((16, 16)) * 255).astype(np.uint8)).save(tmp_path / "x.png")
    np.save(tmp_path / "a.npy", np.ones((4, 5), np.float32))
    assert mmedge(["runtime", "predict", str(bundle), "--image", str(tmp_path / "x.png")]) == 0
    out = capsys.readouterr().out
    assert "pattern   image  (missing: audio)" in out and "inference" in out and "c0" in out
    assert mmedge(["runtime", "predict", str(bundle), "--audio", str(tmp_path / "a.npy"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pattern"] == "audio"
    assert mmedge(["runtime", "predict", str(bundle), "--audio", str(tmp_path / "none.npy")]) == 2
    assert "does not exist" in capsys.readouterr().err
