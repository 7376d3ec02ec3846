"""The runtime's typed errors. Each says what was asked for, what exists and how to fix it.

Every error carries ``pattern`` (a pattern key, or None when no pattern is involved) so a
host loop can log which branch failed. The runtime issue adds input/sensor errors here.
"""
from __future__ import annotations


class MMEdgeError(Exception):
    """Base of every error the runtime raises on purpose."""

    def __init__(self, message: str, *, pattern: str | None = None) -> None:
        self.pattern = pattern
        super().__init__(message)


class BundleIntegrityError(MMEdgeError):
    """A bundle that must not be loaded: bad schema, wrong checksum, or a path leaving the bundle."""

    def __init__(self, message: str, *, pattern: str | None = None, path: str | None = None) -> None:
        self.path = path
        super().__init__(message, pattern=pattern)
