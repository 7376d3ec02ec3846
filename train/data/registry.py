"""One entry point for every dataset: built-in names or a user-format directory."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from train.data.avdigits import load_av_digits
from train.data.cache import default_data_dir
from train.data.easyvqa import load_easy_vqa
from train.data.errors import UnknownDatasetError
from train.data.types import MultimodalDataset
from train.data.user_format import load_user_dataset

Loader = Callable[..., MultimodalDataset]
BUILTIN: dict[str, Loader] = {"av-digits": load_av_digits, "easy-vqa": load_easy_vqa}


def load_dataset(name_or_path: str | Path, data_dir: Path | str | None = None, *, limit: int | None = None,
                 seed: int = 0, strict: bool = True) -> MultimodalDataset:
    """A dataset with train/val/test splits and preprocess specs fitted on its train split.

    ``name_or_path``: "av-digits", "easy-vqa", or a user-format directory.
    ``data_dir``: cache for built-in data (default $MMEDGE_DATA_DIR, else ./data).
    ``limit``: cap every split at this many samples (stratified by label, chosen by ``seed``);
    the statistics are fitted on the capped train split. Split membership itself is fixed
    per dataset and does not depend on ``seed``.
    ``strict``: user format only; False skips bad sample lines into ``dataset.skipped``.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    key = str(name_or_path)
    if key in BUILTIN:
        return BUILTIN[key](default_data_dir(data_dir), limit=limit, seed=seed)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return load_user_dataset(path, limit=limit, seed=seed, strict=strict)
    raise UnknownDatasetError(
        f"{key!r} is neither a built-in dataset ({', '.join(BUILTIN)}) nor a directory. "
        "Fix: use a built-in name, or point at a folder holding dataset.json and samples.jsonl")
