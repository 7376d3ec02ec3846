"""`mmedge runtime` with a bundle: its modality flags in --help, sequence policies and degraded graphs."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from runtime.cli import main as mmedge
from runtime.errors import DegradedGraphWarning
from runtime.session import Runtime
from runtime_fixtures import copy_bundle, tiny_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_bundle(tmp_path_factory.mktemp("cli"))


@pytest.fixture(scope="module")
def degraded(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy whose fp32 'audio' graph is marked degraded, as --allow-degraded writes it."""
    out = copy_bundle(bundle, tmp_path_factory.mktemp("deg") / "b")
    path = out / "manifest.json"
    data = json.loads(path.read_text())
    for g in data["graphs"]:
        g["degraded"] = g["pattern"] == "audio"
    path.write_text(json.dumps(data))
    return out


def test_predict_help_with_a_bundle_lists_its_modality_flags(bundle: Path, capsys: pytest.CaptureFixture) -> None:
    assert mmedge(["runtime", "predict", str(bundle), "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "--audio" in out and "--image" in out and "modalities of this bundle" in out
    assert "at most 6 frames; longer: truncate" in out  # the audio flag says what a long clip gets
    assert "--top-k" in out and "--precision" in out  # the ordinary options are still there
    assert mmedge(["runtime", "predict", "--precision", "fp32", str(bundle), "-h"]) == 0
    assert "--audio" in capsys.readouterr().out


def test_predict_help_without_a_bundle_is_the_generic_help(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        mmedge(["runtime", "predict", "--help"])
    assert exit_.value.code == 0 and "--audio" not in capsys.readouterr().out
    with pytest.raises(SystemExit):
        mmedge(["runtime", "predict", str(tmp_path / "nope"), "--help"])
    assert "--audio" not in capsys.readouterr().out


def test_info_says_each_modality_s_sequence_policy(bundle: Path, capsys: pytest.CaptureFixture) -> None:
    assert mmedge(["runtime", "info", str(bundle), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["sequences"] == {"audio": {"max_frames": 6, "policy": "truncate", "recorded": True}}
    assert not any(out["degraded"].values())
    assert mmedge(["runtime", "info", str(bundle)]) == 0
    assert "sequence: at most 6 frames; longer -> truncate" in capsys.readouterr().out


def test_predict_says_when_a_sequence_was_cut(bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    np.save(tmp_path / "long.npy", np.ones((9, 5), np.float32))
    assert mmedge(["runtime", "predict", str(bundle), "--audio", str(tmp_path / "long.npy"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sequences_cut"] == {"audio": "truncate"}


def test_info_shows_degraded_graphs_per_graph(degraded: Path, capsys: pytest.CaptureFixture) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DegradedGraphWarning)
        assert mmedge(["runtime", "info", str(degraded), "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["degraded"] == {"fp32/audio+image": False, "fp32/audio": True, "fp32/image": False}
        assert mmedge(["runtime", "info", str(degraded)]) == 0
    text = capsys.readouterr().out
    assert "audio 0." in text and "DEGRADED" in text and "degraded    fp32/audio:" in text
    assert text.count("DEGRADED") == 1


def test_load_warns_with_a_typed_warning_a_host_can_make_an_error(degraded: Path, bundle: Path) -> None:
    with pytest.warns(DegradedGraphWarning, match=r"\['audio'\].*--allow-degraded"):
        Runtime.load(degraded, lazy=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DegradedGraphWarning)
        with pytest.raises(DegradedGraphWarning):
            Runtime.load(degraded, lazy=True)
        Runtime.load(bundle, lazy=True)  # a bundle without degraded graphs loads silently
    assert issubclass(DegradedGraphWarning, UserWarning)


def test_predict_backend_flag_reaches_the_runner_seam(bundle: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    np.save(tmp_path / "clip.npy", np.ones((4, 5), np.float32))
    argv = ["runtime", "predict", str(bundle), "--audio", str(tmp_path / "clip.npy")]
    assert mmedge([*argv, "--backend", "onnxruntime", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pattern"] == "audio"
    # This bundle has no engines (and this machine no TensorRT): a typed refusal, exit 2, no traceback.
    assert mmedge([*argv, "--backend", "tensorrt"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and ("ArtifactMissing" in err or "BackendUnavailable" in err), err
    assert mmedge([*argv, "--backend", "openvino"]) == 2
    assert "UnknownRunner" in capsys.readouterr().err
