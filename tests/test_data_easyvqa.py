"""easy-vqa: real data from the easy_vqa package, image-disjoint splits, decoded-image cache."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runtime.preprocess import make_preprocessor
from train.data.cache import default_data_dir
from train.data.easyvqa import load_images
from train.data.registry import load_dataset
from train.data.types import MultimodalDataset


def image_id(sample_id: str) -> int:
    return int(sample_id.split("-")[2])


@pytest.fixture(scope="module")
def full() -> MultimodalDataset:
    return load_dataset("easy-vqa")


def test_full_splits_are_image_disjoint(full: MultimodalDataset) -> None:
    assert full.num_classes == 13 and full.task == "single-label" and full.skipped == []
    sizes = {k: len(v) for k, v in full.splits.items()}
    assert sizes["train"] + sizes["val"] == 38575 and sizes["test"] == 9673
    train_imgs = {image_id(s.id) for s in full.split("train")}
    val_imgs = {image_id(s.id) for s in full.split("val")}
    assert not train_imgs & val_imgs and len(train_imgs) + len(val_imgs) == 4000
    assert len(val_imgs) == 600
    assert all(s.id.startswith("vqa-test-") for s in full.split("test"))


def test_limit_loads_real_samples() -> None:
    ds = load_dataset("easy-vqa", limit=120, seed=0)
    assert ds.labels[:3] == ["circle", "green", "red"] and len(ds.labels) == 13
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 120, "val": 120, "test": 120}
    assert len({s.label for s in ds.split("train")}) == 13  # stratified: rare answers survive the cap
    assert not {image_id(s.id) for s in ds.split("train")} & {image_id(s.id) for s in ds.split("val")}
    s = ds.split("train")[0]
    assert s.inputs["image"].shape == (64, 64, 3) and s.inputs["image"].dtype == np.uint8
    assert isinstance(s.inputs["question"], str) and s.inputs["question"].endswith("?")
    q = ds.modalities["question"].preprocess
    assert q["type"] == "text" and q["max_length"] == 24 and Path(q["tokenizer_file"]).is_file()
    out = make_preprocessor(q)([x.inputs["question"] for x in ds.split("val")[:8]])
    assert out["input_ids"].shape[0] == 8 and out["input_ids"][:, 0].tolist() == [101] * 8
    img = ds.modalities["image"].preprocess
    assert len(img["mean"]) == 3 and all(0.5 < m < 1.0 for m in img["mean"])  # mostly white backgrounds
    pix = make_preprocessor(img)([x.inputs["image"] for x in ds.split("val")[:4]])["pixel_values"]
    assert pix.shape == (4, 3, 64, 64) and np.isfinite(pix).all()


def test_images_match_the_pngs_and_bad_cache_is_rebuilt(tmp_path: Path) -> None:
    import easy_vqa
    from PIL import Image

    cached = load_images(default_data_dir())
    some_id, some_path = sorted(easy_vqa.get_test_image_paths().items())[7]
    np.testing.assert_array_equal(cached["test"][0][some_id], np.asarray(Image.open(some_path).convert("RGB")))
    bad = tmp_path / "easy-vqa" / "images-v1.npz"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"garbage")
    rebuilt = load_images(tmp_path)
    assert len(rebuilt["train"][0]) == 4000 and len(rebuilt["test"][0]) == 1000
    np.testing.assert_array_equal(rebuilt["test"][0][some_id], cached["test"][0][some_id])
    assert bad.stat().st_size > 50_000_000
