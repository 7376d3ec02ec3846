"""Write a directory atomically: bundles, runs and checkpoints all go through here.

Build in a temp dir beside the target, rename onto it only on success, so a crash never
leaves a half-written directory under the real name. Stdlib only: export and train both
use it, and neither may import the other's helpers.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """A temp dir ``.<name>.tmp-<pid>-*`` beside ``target``, renamed onto it only on success.

    On any exception the temp dir is removed. After a SIGKILL it stays behind under its temp
    name (runtime.manifest.load_manifest refuses such names), and the next write to the same
    target sweeps temp dirs whose process is gone.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _sweep_stale(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; a bundle is meant to be read by a device's service user
    try:
        yield tmp
        old = target.with_name(f".{target.name}.old-{os.getpid()}") if target.exists() else None
        if old is not None:
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _sweep_stale(target: Path) -> None:
    for p in target.parent.glob(f".{target.name}.tmp-*"):
        try:
            pid = int(p.name.rsplit(".tmp-", 1)[1].split("-", 1)[0])
            os.kill(pid, 0)  # still running: leave it alone
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except (ValueError, PermissionError, IndexError):
            pass
