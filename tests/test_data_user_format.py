"""The generic user format: real tiny files (PNG, wav, npy, inline text) built in tmp_path."""
from __future__ import annotations

import json
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from runtime.preprocess import make_preprocessor
from train.data.errors import DataFormatError, UnknownDatasetError
from train.data.registry import load_dataset

MODS = {"camera": {"type": "image"}, "caption": {"type": "text", "max_length": 16},
        "mic": {"type": "audio"}, "imu": {"type": "timeseries"}}


def write_png(path: Path, seed: int, size: tuple[int, int] = (6, 5), mode: str = "RGB") -> str:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)
    return path.name


def write_wav(path: Path, seconds: float = 0.1, rate: int = 8000, channels: int = 1, freq: float = 300.0) -> None:
    t = np.arange(int(seconds * rate)) / rate
    pcm = (0.3 * np.sin(2 * np.pi * freq * t) * 32767).astype("<i2")
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.repeat(pcm, channels).tobytes())


def write_dataset(root: Path, config: dict[str, Any], lines: list[Any]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps(config, indent=2))
    (root / "samples.jsonl").write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return root


@pytest.fixture
def sensors(tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    """12 samples, 2 classes, four sensor types, some sensors missing (null or absent)."""
    root = tmp_path / "set"
    lines = []
    (root / "imu").mkdir(parents=True)
    for k in range(12):
        write_png(root / "img" / f"{k}.png", k, size=(6, 5) if k != 3 else (9, 9))
        write_wav(root / "wav" / f"{k}.wav", seconds=0.1 + 0.01 * k, freq=200 + 50 * k)
        np.save(root / "imu" / f"{k}.npy", np.random.default_rng(k).normal(k, 1, (5 + k, 3)).astype(np.float32))
        line = {"id": f"s{k}", "label": "cat" if k % 2 else "dog", "camera": f"img/{k}.png",
                "caption": f"a picture number {k}", "mic": f"wav/{k}.wav", "imu": f"imu/{k}.npy"}
        if k % 4 == 0:
            line["caption"] = None
        if k % 3 == 0:
            del line["mic"]
        line["split"] = "train" if k < 8 else ("val" if k < 10 else "test")
        lines.append(line)
    write_dataset(root, {"name": "sensors", "task": "single-label", "modalities": MODS}, lines)
    return root, lines


def test_single_label_with_four_sensor_types(sensors: tuple[Path, list[dict[str, Any]]]) -> None:
    root, lines = sensors
    ds = load_dataset(str(root))
    assert ds.name == "sensors" and ds.labels == ["cat", "dog"] and ds.skipped == []
    assert [len(ds.split(k)) for k in ("train", "val", "test")] == [8, 2, 2]
    s0 = ds.split("train")[0]
    assert s0.id == "s0" and s0.label == 1 and set(s0.inputs) == {"camera", "imu"}  # caption null, mic absent
    assert s0.pattern.key == "camera+imu"
    spec = {n: m.preprocess for n, m in ds.modalities.items()}
    assert spec["camera"]["size"] == [5, 6] and spec["camera"]["channels"] == 3  # the most common size
    assert spec["mic"]["input"] == "waveform" and spec["mic"]["sample_rate"] == 8000
    assert spec["mic"]["mfcc"]["n_fft"] == 256 and spec["mic"]["mfcc"]["hop_length"] == 80
    assert spec["imu"]["n_channels"] == 3 and spec["imu"]["max_frames"] == 12  # longest train clip: 5 + 7
    train_imu = np.concatenate([s.inputs["imu"] for s in ds.split("train")])
    np.testing.assert_allclose(spec["imu"]["mean"], train_imu.mean(axis=0), rtol=1e-5)
    assert spec["caption"]["max_length"] == 16 and Path(spec["caption"]["tokenizer_file"]).is_file()
    for name, m in ds.modalities.items():
        raws = [s.inputs[name] for s in ds.split("train") if name in s.inputs]
        out = make_preprocessor(m.preprocess)(raws)
        assert all(len(v) == len(raws) for v in out.values())
    wav = ds.split("train")[1].inputs["mic"]
    assert wav.dtype == np.float32 and wav.ndim == 1 and 0.25 < np.abs(wav).max() < 0.31


def test_multi_label_and_automatic_split(tmp_path: Path) -> None:
    tags = [["indoor"], ["cat", "indoor"], [], ["cat"]] * 10
    lines = [{"id": k, "labels": t, "note": f"sample {k}"} for k, t in enumerate(tags)]
    root = write_dataset(tmp_path / "ml", {"task": "multi-label", "labels": ["cat", "indoor", "dog"],
                                           "modalities": {"note": {"type": "text"}},
                                           "split": {"val": 0.2, "test": 0.1, "seed": 3}}, lines)
    ds = load_dataset(root)
    assert ds.name == "ml" and ds.labels == ["cat", "indoor", "dog"]
    assert [len(ds.split(k)) for k in ("train", "val", "test")] == [28, 8, 4]
    by_id = {s.id: s for v in ds.splits.values() for s in v}
    assert by_id["1"].label == (0, 1) and by_id["2"].label == () and by_id["0"].label == (1,)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(ds.modalities["note"].preprocess["tokenizer_file"])
    tok.no_padding()
    longest = max(len(tok.encode(s.inputs["note"]).ids) for s in ds.split("train"))
    assert ds.modalities["note"].preprocess["max_length"] == longest == 4  # [CLS] sample N [SEP]
    again = load_dataset(root)
    assert [s.id for s in again.split("val")] == [s.id for s in ds.split("val")]


def test_binary_int_labels_and_audio_features(tmp_path: Path) -> None:
    root = tmp_path / "bin"
    (root / "feat").mkdir(parents=True)
    lines = []
    for k in range(10):
        np.save(root / "feat" / f"{k}.npy", np.full((4 + k, 7), float(k), dtype=np.float32))
        lines.append({"id": f"b{k}", "label": k % 2, "mic": f"feat/{k}.npy", "split": "train" if k < 6 else "test"})
    ds = load_dataset(write_dataset(root, {"task": "binary", "modalities": {"mic": {"type": "audio"}}}, lines))
    assert ds.labels == ["0", "1"] and [s.label for s in ds.split("train")] == [0, 1, 0, 1, 0, 1]
    assert ds.modalities["mic"].preprocess["input"] == "features" and ds.modalities["mic"].preprocess["n_features"] == 7


def test_limit_caps_each_split(sensors: tuple[Path, list[dict[str, Any]]]) -> None:
    ds = load_dataset(str(sensors[0]), limit=4)
    assert [len(ds.split(k)) for k in ("train", "val", "test")] == [4, 2, 2]
    assert sorted(s.label for s in ds.split("train")) == [0, 0, 1, 1]


def line(k: int, **kw: Any) -> dict[str, Any]:
    return {"id": f"s{k}", "label": "cat", "camera": f"img/{k}.png", **kw}


def bad_case(tmp_path: Path, case: str) -> tuple[Path, str, int]:
    """A dataset with one defect; returns (root, file name expected in the message, line number)."""
    root = tmp_path / case
    for k in range(4):
        write_png(root / "img" / f"{k}.png", k)
    write_png(tmp_path / "outside.png", 9)
    config: dict[str, Any] = {"task": "single-label", "labels": ["cat", "dog"], "modalities": {"camera": {"type": "image"}}}
    lines: list[Any] = [line(0), line(1, label="dog"), line(2), line(3)]
    where = ("samples.jsonl", 3)
    if case == "malformed":
        lines[2] = '{"id": "s2", "label": "cat",'
    elif case == "missing-file":
        lines[2] = line(2, camera="img/nope.png")
    elif case == "escapes":
        lines[2] = line(2, camera="../outside.png")
    elif case == "unknown-type":
        config["modalities"]["lidar"] = {"type": "pointcloud"}
        where = ("dataset.json", 11)
    elif case == "modality-key-typo":
        config["modalities"]["camera"]["sise"] = [4, 4]
        where = ("dataset.json", 10)
    elif case == "never-in-train":
        config["modalities"]["imu"] = {"type": "timeseries"}
        where = ("dataset.json", 11)
    elif case == "undeclared-key":
        lines[2] = line(2, mic="a.wav")
    elif case == "nothing-present":
        lines[2] = line(2, camera=None)
    elif case == "label-not-declared":
        lines[2] = line(2, label="bird")
    elif case == "labels-vs-task":
        lines[2] = {**line(2), "labels": ["cat"]}
    elif case == "label-types":
        del config["labels"]
        lines[2] = line(2, label=1)
    elif case == "duplicate-id":
        lines[2] = line(0)
    elif case == "stereo-wav":
        config["modalities"]["mic"] = {"type": "audio"}
        write_wav(root / "st.wav", channels=2)
        lines[2] = line(2, mic="st.wav")
    elif case == "bad-npy-shape":
        config["modalities"]["imu"] = {"type": "timeseries"}
        for k in range(4):
            np.save(root / f"{k}.npy", np.zeros((5, 2 if k != 2 else 4), np.float32))
        lines = [dict(x, imu=f"{k}.npy") for k, x in enumerate(lines)]
    write_dataset(root, config, lines)
    return root, *where


CASES = {"malformed": "malformed JSON (Expecting property name enclosed in double quotes at column 29)", "missing-file": "nope.png", "escapes": "escapes the dataset directory",
         "unknown-type": "'pointcloud'", "modality-key-typo": "unknown key 'sise'",
         "never-in-train": "'imu' is missing in all 4 training samples", "undeclared-key": "'mic' is not a declared modality",
         "nothing-present": "no modality present", "label-not-declared": "'bird' is not one of",
         "labels-vs-task": "task is single-label", "label-types": "label 1 is an int but line 1 uses a string label",
         "duplicate-id": "duplicate id 's0' (first used on line 1)", "stereo-wav": "2 channels",
         "bad-npy-shape": "imu file '2.npy': timeseries has 4 features per frame"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_format_errors_name_file_and_line(tmp_path: Path, case: str) -> None:
    root, file, number = bad_case(tmp_path, case)
    with pytest.raises(DataFormatError) as err:
        load_dataset(str(root))
    msg = str(err.value)
    assert f"{file}:{number}" in msg and CASES[case] in msg and "Fix:" in msg, msg
    assert err.value.line == number and isinstance(err.value, ValueError)


def test_non_strict_skips_and_reports(tmp_path: Path) -> None:
    root, _, _ = bad_case(tmp_path, "missing-file")
    ds = load_dataset(str(root), strict=False)
    assert sum(len(v) for v in ds.splits.values()) == 3
    assert len(ds.skipped) == 1 and "samples.jsonl:3" in ds.skipped[0] and "nope.png" in ds.skipped[0]


def test_unknown_name_and_bad_limit(tmp_path: Path) -> None:
    with pytest.raises(UnknownDatasetError, match="av-digits"):
        load_dataset("no-such-set")
    with pytest.raises(ValueError, match="limit"):
        load_dataset("av-digits", limit=0)
    with pytest.raises(DataFormatError, match="dataset.json"):
        load_dataset(str(tmp_path))
