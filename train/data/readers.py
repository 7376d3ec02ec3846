"""Reading one user-format file into the raw value a sensor would deliver (train side: PIL, wave)."""
from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from runtime.errors import MMEdgeError

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
    """(float32 mono waveform in [-1, 1), sample rate) from a 16-bit PCM wav."""
    try:
        with wave.open(str(path), "rb") as w:
            channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            frames = w.readframes(w.getnframes())
    except (wave.Error, EOFError, OSError) as exc:
        raise ReadError(f"cannot read wav: {exc}", "write 16-bit PCM wav (e.g. sox in.wav -b 16 out.wav)") from None
    if width != 2:
        raise ReadError(f"wav has {8 * width}-bit samples; only 16-bit PCM is supported",
                        "convert with e.g. `sox in.wav -b 16 out.wav`")
    if channels != 1:
        raise ReadError(f"wav has {channels} channels; only mono is supported",
                        "downmix with e.g. `sox in.wav out.wav remix -`")
    return (np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0), rate


def read_npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ReadError(f"cannot load .npy: {exc}", "save a plain numeric array with numpy.save (no pickled objects)") from None
    if not isinstance(arr, np.ndarray):
        raise ReadError("file holds an npz archive, not one array", "save one array per file with numpy.save")
    return arr
