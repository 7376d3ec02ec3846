"""Per-modality sequence policy: truncate (default), window (the last max_frames frames) or error."""
from __future__ import annotations

import json
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest

from runtime.errors import BundleIntegrityError, InputShapeError, RuntimeInputError, SequenceTooLong
from runtime.preprocess import PreprocessError, SequenceTooLongError, make_preprocessor
from runtime.session import Runtime
from runtime_fixtures import copy_bundle, tiny_bundle

TS = {"type": "timeseries", "n_channels": 1, "max_frames": 8}
RAMP = np.arange(12, dtype=np.float32)[:, None]  # frame i holds the value i


def test_window_of_a_12_frame_input_with_max_8_keeps_frames_4_to_11() -> None:
    pre = make_preprocessor({**TS, "sequence_policy": "window"})
    out = pre([RAMP])
    assert out["values"][0, :, 0].tolist() == [4, 5, 6, 7, 8, 9, 10, 11]
    assert out["mask"].tolist() == [[1] * 8] and pre.cuts == 1
    pre([RAMP[:8]])  # exactly max_frames: nothing cut
    assert pre.cuts == 1


def test_truncate_is_the_default_and_keeps_frames_0_to_7() -> None:
    pre = make_preprocessor(TS)
    assert pre.policy == "truncate"
    assert pre([RAMP])["values"][0, :, 0].tolist() == [0, 1, 2, 3, 4, 5, 6, 7] and pre.cuts == 1
    # a batch: each long sample counts once, the short one not at all
    out = pre([RAMP, RAMP[:3], RAMP[2:]])
    assert out["values"][2, :, 0].tolist() == [2, 3, 4, 5, 6, 7, 8, 9] and pre.cuts == 3


def test_error_policy_raises_with_length_and_maximum() -> None:
    pre = make_preprocessor({**TS, "sequence_policy": "error"})
    assert pre([RAMP[:8]])["values"].shape == (1, 8, 1)
    with pytest.raises(SequenceTooLongError) as err:
        pre([RAMP[:8], RAMP])
    assert (err.value.length, err.value.maximum, err.value.index, err.value.reason) == (12, 8, 1, "length")
    assert isinstance(err.value, PreprocessError) and pre.cuts == 0


def test_waveform_window_gives_the_last_mfcc_frames_of_the_whole_clip() -> None:
    spec = {"type": "audio", "input": "waveform", "sample_rate": 8000, "max_frames": 5,
            "mfcc": {"n_mfcc": 4, "n_fft": 64, "hop_length": 32, "n_mels": 8}}
    wave = np.random.default_rng(0).uniform(-1, 1, 1000).astype(np.float32)  # (1000 - 64) // 32 + 1 = 30 frames
    full = make_preprocessor({k: v for k, v in spec.items() if k != "max_frames"}).features(wave)
    assert full.shape == (30, 4)
    np.testing.assert_allclose(make_preprocessor(spec).features(wave), full[:5], rtol=1e-6)
    np.testing.assert_allclose(make_preprocessor({**spec, "sequence_policy": "window"}).features(wave), full[25:],
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(SequenceTooLongError, match="30 frames"):
        make_preprocessor({**spec, "sequence_policy": "error"}).features(wave)


def test_the_cut_counter_survives_threads_and_pickling() -> None:
    pre = make_preprocessor({**TS, "sequence_policy": "window"})
    threads = [threading.Thread(target=lambda: [pre([RAMP]) for _ in range(50)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert pre.cuts == 200
    copy = pickle.loads(pickle.dumps(pre))  # DataLoader workers pickle preprocessors
    copy([RAMP])
    assert copy.cuts == 201 and pre.cuts == 200


# ---------------------------------------------------------------------- through the runtime
@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_bundle(tmp_path_factory.mktemp("seq"))


def _with_policy(src: Path, dst: Path, policy: str | None) -> Path:
    """A copy of the bundle whose audio spec has ``policy`` (None: the key removed, as in older bundles)."""
    out = copy_bundle(src, dst)
    path = out / "manifest.json"
    data = json.loads(path.read_text())
    pre = data["modalities"]["audio"]["preprocess"]
    pre.pop("sequence_policy", None)
    if policy is not None:
        pre["sequence_policy"] = policy
    path.write_text(json.dumps(data))
    return out


def _audio(frames: int) -> np.ndarray:
    return np.random.default_rng(frames).normal(0, 1, (frames, 5)).astype(np.float32)


def test_export_records_truncate_and_an_old_bundle_without_the_key_reads_as_truncate(bundle: Path,
                                                                                   tmp_path: Path) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["modalities"]["audio"]["preprocess"]["sequence_policy"] == "truncate"
    assert "sequence_policy" not in manifest["modalities"]["image"]["preprocess"]
    old = Runtime.load(_with_policy(bundle, tmp_path / "old", None), intra_op_threads=1)
    assert old.sequence_policies == {"audio": "truncate"} and old.sequence_cuts == {"audio": 0}
    long = _audio(9)  # max_frames is 6
    np.testing.assert_array_equal(old.predict({"audio": long, "image": None}).probabilities,
                                  old.predict({"audio": long[:6], "image": None}).probabilities)
    assert old.sequence_cuts == {"audio": 1}


def test_window_runs_the_last_frames_and_counts(bundle: Path, tmp_path: Path) -> None:
    rt = Runtime.load(_with_policy(bundle, tmp_path / "w", "window"), intra_op_threads=1)
    long = _audio(9)
    got = rt.predict({"audio": long, "image": None}).probabilities
    np.testing.assert_array_equal(got, rt.predict({"audio": long[3:], "image": None}).probabilities)
    results = rt.predict_batch([{"audio": long, "image": None}, {"audio": long[:4], "image": None}])
    assert all(not isinstance(r, Exception) for r in results)
    assert rt.sequence_policies == {"audio": "window"} and rt.sequence_cuts == {"audio": 2}


def test_error_policy_is_a_typed_input_error_naming_modality_length_and_maximum(bundle: Path,
                                                                               tmp_path: Path) -> None:
    rt = Runtime.load(_with_policy(bundle, tmp_path / "e", "error"), intra_op_threads=1)
    with pytest.raises(SequenceTooLong) as err:
        rt.predict({"audio": _audio(9), "image": None})
    e = err.value
    assert isinstance(e, InputShapeError) and isinstance(e, RuntimeInputError)
    assert (e.modality, e.length, e.maximum, e.pattern) == ("audio", 9, 6, "audio")
    assert "audio" in str(e) and "9 frames" in str(e) and "6" in str(e)
    out = rt.predict_batch([{"audio": _audio(4), "image": None}, {"audio": _audio(9), "image": None}],
                           errors="return")
    assert isinstance(out[1], SequenceTooLong) and out[1].index == 1 and not isinstance(out[0], Exception)
    assert rt.sequence_cuts == {"audio": 0}


def test_an_unknown_policy_in_a_manifest_is_refused(bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleIntegrityError, match="sequence_policy"):
        Runtime.load(_with_policy(bundle, tmp_path / "bad", "drop"))


def test_export_policy_flag_is_checked_before_the_export() -> None:
    pytest.importorskip("torch")
    from export.build import BuildConfig, BuildError, manifest_specs
    from export.cli import parse_sequence_policies
    from export_fixtures import tiny

    model, _ = tiny("cmpt", 2)
    specs = manifest_specs(model, BuildConfig(sequence_policy={"audio": "window"}))
    assert specs["audio"]["sequence_policy"] == "window" and "sequence_policy" not in specs["image"]
    with pytest.raises(BuildError, match="not modalities of this model"):
        manifest_specs(model, BuildConfig(sequence_policy={"accel": "window"}))
    with pytest.raises(BuildError, match="image modalities take sequence_policy"):
        manifest_specs(model, BuildConfig(sequence_policy={"image": "window"}))
    with pytest.raises(BuildError, match="must be one of|take sequence_policy"):
        manifest_specs(model, BuildConfig(sequence_policy={"audio": "drop"}))
    assert parse_sequence_policies(["audio=window", "gyro=error"]) == {"audio": "window", "gyro": "error"}
    for bad in (["audio"], ["audio=window", "audio=error"], ["=window"]):
        with pytest.raises(ValueError, match="--sequence-policy"):
            parse_sequence_policies(bad)
