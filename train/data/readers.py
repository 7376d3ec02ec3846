"""Reading one user-format file into the raw value a sensor would deliver (train side: PIL, wave)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.errors import MMEdgeError
from runtime.preprocess_base import PreprocessError
from runtime.preprocess_sequence import read_wav as runtime_read_wav

EXTENSIONS: dict[str, tuple[str, ...]] = {
    "image": (".png", ".jpg", ".jpeg", ".npy"),
    "audio": (".wav", ".npy"),
    "timeseries": (".npy",),
}


class ReadError(MMEdgeError, ValueError):
    """A file that exists but cannot be read as its modality; ``fix`` says what to do."""

    def __init__(self, message: str, fix: str = "") -> None:
        self.fix = fix
        super().__init__(message)


def read_image(path: Path) -> np.ndarray:
    """uint8 (H, W), (H, W, 3) or (H, W, 4) from png/jpg; the stored array from .npy."""
    if path.suffix.lower() == ".npy":
        return read_npy(path)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "RGB", "RGBA"):
                im = im.convert("RGB")  # palette, CMYK, 16-bit: one uint8 convention for all
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise ReadError(f"cannot decode image: {exc}", "re-save it as an 8-bit PNG or JPEG") from None


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """(float32 mono waveform in [-1, 1), sample rate) from a 16-bit PCM wav: the runtime's reader, so a
    clip reads the same in training and in ``mmedge runtime predict``."""
    try:
        return runtime_read_wav(path)
    except OSError as exc:
        raise ReadError(f"cannot read wav: {exc}", "write 16-bit PCM wav (e.g. sox in.wav -b 16 out.wav)") from None
    except PreprocessError as exc:  # "<path>: <what>; <how to fix it>"
        message, _, fix = str(exc).replace(f"{path}: ", "", 1).rpartition("; ")
        raise ReadError(message, fix) from None


def read_npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ReadError(f"cannot load .npy: {exc}", "save a plain numeric array with numpy.save (no pickled objects)") from None
    if not isinstance(arr, np.ndarray):
        raise ReadError("file holds an npz archive, not one array", "save one array per file with numpy.save")
    return arr
