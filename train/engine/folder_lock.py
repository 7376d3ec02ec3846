"""One writer per results folder: an advisory lock that a second invocation on the same folder hits at once.

``mmedge train compare`` (and the ablation, its preset) rewrites ``results.json`` from what it read at
its start plus its own runs, so two invocations writing one folder would each drop the other's new
records. The lock makes that a clear error instead. It is ``fcntl.flock`` on ``<folder>/.lock``: the
kernel releases it when the process exits, however it exits, so a killed run never leaves it stale.
"""
from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from runtime.errors import ConfigError

LOCK_NAME = ".lock"


@contextmanager
def folder_lock(folder: Path, what: str) -> Iterator[None]:
    """Hold ``folder``'s lock for the block; ConfigError naming the holder's pid when another process has it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_NAME, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "?"
            raise ConfigError(f"another {what} (pid {holder}) is writing {folder}; wait for it to finish, or give "
                              "this one another --out") from None
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(str(os.getpid()))
            fh.flush()
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
