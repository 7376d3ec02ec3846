"""Typed errors of the data layer; each message says what is wrong, where, and how to fix it."""
from __future__ import annotations

from pathlib import Path

from runtime.errors import MMEdgeError


class DataFormatError(MMEdgeError, ValueError):
    """A user-format dataset that does not follow the format; names the file and line."""

    def __init__(self, file: Path | str, line: int | None, message: str, fix: str = "") -> None:
        self.file = str(file)
        self.line = line
        where = f"{self.file}:{line}" if line is not None else self.file
        super().__init__(f"{where}: {message}" + (f". Fix: {fix}" if fix else ""))


class DatasetFetchError(MMEdgeError, RuntimeError):
    """A built-in dataset could not be downloaded or extracted."""


class ChecksumError(DatasetFetchError):
    """A fetched or cached file does not match its pinned sha256 (the bad file is deleted)."""


class UnknownDatasetError(MMEdgeError, ValueError):
    """load_dataset got a name that is neither built in nor a user-format directory."""
