"""Write files and directories atomically: every output of mmedge goes through here.

``atomic_file`` / ``write_text_atomic`` / ``write_bytes_atomic`` / ``write_json_atomic``: a
temp file beside the target, renamed onto it (``os.replace``) only when fully written, so a
reader sees the complete old or the complete new file, never a partial one.

``atomic_dir`` (bundles, runs, checkpoints):

Build in a temp dir beside the target and swap it in only on success, so a crash never
leaves a half-written directory under the real name, and a reader never finds the target
missing: on Linux the swap is one ``renameat2(RENAME_EXCHANGE)`` of the new and the old
directory, so at every instant the target is either the complete old or the complete new
directory. Where that call does not exist (other systems, some file systems) it falls back
to two renames, target -> ``.<name>.old-<pid>`` then temp -> target; a process killed
between them leaves no target, and the next ``atomic_dir`` on it moves the old one back
before anything else. Stdlib only: export and train both use it, and neither may import
the other's helpers.
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_NO_EXCHANGE = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV}


@contextmanager
def atomic_file(target: Path) -> Iterator[Path]:
    """A temp path ``.<name>.tmp-<pid>-*<suffix>`` beside ``target`` (same suffix, so writers that
    infer a format from it, e.g. matplotlib, still do); renamed onto ``target`` only on success,
    removed on any exception. Permissions are a normal file's (0666 minus the umask)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.tmp-{os.getpid()}-", suffix=target.suffix,
                                dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: Path, text: str) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_atomic(path: Path, data: Any, *, indent: int | None = 2, **dump: Any) -> Path:
    """``data`` as JSON plus a final newline (``dump``: more json.dumps keywords, e.g. default=str)."""
    return write_text_atomic(path, json.dumps(data, indent=indent, **dump) + "\n")


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """A temp dir ``.<name>.tmp-<pid>-*`` beside ``target``, swapped onto it only on success.

    On any exception the temp dir is removed. After a SIGKILL it stays behind under its temp
    name (runtime.manifest.load_manifest refuses such names, and ``.old-`` ones), and the next
    write to the same target sweeps temp and old dirs whose process is gone.
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
        if target.exists() or target.is_symlink():
            if exchange(tmp, target):  # tmp now holds the old directory (a dead pid's tmp name: swept if killed)
                shutil.rmtree(tmp, ignore_errors=True)
                return
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in _NO_EXCHANGE:
        return False
    raise OSError(err, os.strerror(err), str(b))


def _pid_of(name: str, marker: str) -> int | None:
    try:
        return int(name.rsplit(marker, 1)[1].split("-", 1)[0])
    except (ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _sweep_stale(target: Path) -> None:
    """Remove temp/old dirs of dead processes; first, if a fallback swap was killed between its two
    renames (no target, an old dir), move the newest such old dir back to the target."""
    dead_old = [p for p in target.parent.glob(f".{target.name}.old-*")
                if (pid := _pid_of(p.name, ".old-")) is not None and not _alive(pid)]
    if dead_old and not (target.exists() or target.is_symlink()):
        newest = max(dead_old, key=lambda p: p.stat().st_mtime)
        os.replace(newest, target)
        dead_old.remove(newest)
    for p in dead_old:
        shutil.rmtree(p, ignore_errors=True)
    for p in target.parent.glob(f".{target.name}.tmp-*"):
        pid = _pid_of(p.name, ".tmp-")
        if pid is not None and not _alive(pid):
            shutil.rmtree(p, ignore_errors=True)
