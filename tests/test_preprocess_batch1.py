"""The batch-1 (streaming) paths of runtime.preprocess give exactly what the batch paths give."""
from __future__ import annotations

import numpy as np
import pytest

from runtime.preprocess import make_preprocessor
from train.data.cache import default_tokenizer_file

IMAGE = {"type": "image", "size": [6, 5], "channels": 3, "mean": [0.2, 0.5, 0.7], "std": [0.3, 0.2, 0.1]}


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64, np.int64])
def test_image_single_equals_its_row_of_a_batch(dtype: type) -> None:
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (6, 5, 3)).astype(dtype) for _ in range(3)]
    pre = make_preprocessor(IMAGE)
    batch = pre(frames)["pixel_values"]
    for i, f in enumerate(frames):
        one = pre([f])["pixel_values"]
        assert one.shape == (1, 3, 6, 5) and one.dtype == np.float32 and one.flags.c_contiguous
        np.testing.assert_array_equal(one[0], batch[i])
    expect = (frames[0].astype(np.float32).transpose(2, 0, 1) / 255 - np.float32(0.5)) / np.float32(0.2)
    np.testing.assert_allclose(batch[0, 1], expect[1], rtol=1e-5, atol=1e-5)


def test_image_fast_and_converting_paths_give_the_same_bits() -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, np.full((6, 5, 1), 9, np.uint8)], axis=2)  # alpha forces the general path
    pre = make_preprocessor(IMAGE)
    np.testing.assert_array_equal(pre([rgb])["pixel_values"], pre([rgba])["pixel_values"])


def test_sequence_single_equals_batch_and_its_mask_is_shared_read_only() -> None:
    spec = {"type": "timeseries", "n_channels": 2, "max_frames": 6, "mean": [1.0, -1.0], "std": [2.0, 0.5]}
    pre = make_preprocessor(spec)
    clip = np.random.default_rng(2).normal(size=(4, 2)).astype(np.float32)
    one, again = pre([clip]), pre([clip])
    both = pre([clip, clip])
    np.testing.assert_array_equal(one["values"][0], both["values"][0])
    np.testing.assert_array_equal(one["mask"], [[1, 1, 1, 1]])
    assert one["mask"] is again["mask"] and not one["mask"].flags.writeable
    assert one["values"].flags.writeable  # values are fresh per call: callers may still edit them
    long = pre([np.zeros((9, 2), np.float32)])  # truncated to max_frames
    assert long["values"].shape == (1, 6, 2) and long["mask"].sum() == 6


def test_text_single_equals_its_unpadded_row_of_a_batch() -> None:
    pre = make_preprocessor({"type": "text", "tokenizer_file": str(default_tokenizer_file()), "max_length": 8})
    texts = ["what color is the circle?", "", "is there a very very very long shape in this image?"]
    batch = pre(texts)
    for i, t in enumerate(texts):
        one = pre([t])
        n = int(batch["attention_mask"][i].sum())
        assert one["input_ids"].shape == (1, n) and one["attention_mask"].sum() == n
        np.testing.assert_array_equal(one["input_ids"][0], batch["input_ids"][i, :n])
