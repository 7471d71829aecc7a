"""Atomic file-system writes.

DVC trusts whatever sits at an output path once a stage exits 0, and a user
trusts whatever sits there after a crash. Writing into a temporary sibling and
renaming at the end means an interrupted stage never leaves a half-written
output that looks valid: either the old state or the complete new one.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import WriteError, write_failure_into


def _default_mode(directory: bool) -> int:
    """Permissions a plain open()/mkdir() would give (mkstemp/mkdtemp use 0600/0700)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the
    platform or file system cannot."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0


def _backup_of(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def recover_directory(target: str | os.PathLike) -> None:
    """Put back an old output that a replace stopped between its two renames (the fallback path of
    :func:`atomic_directory`, on systems without an atomic exchange)."""
    target = Path(target)
    backup = _backup_of(target)
    if backup.exists() and not target.exists():
        os.replace(backup, target)
    elif backup.exists():
        shutil.rmtree(backup, ignore_errors=True)


def _temp_prefix(target: Path) -> str:
    """A temporary sibling's name carries its writer's pid: several processes may write one path at once
    (parallel ``evaluate``s filling the shared FID-network cache), and none may delete another's."""
    return f".{target.name}.tmp-{os.getpid()}-"


def _writer_alive(stale: Path, target: Path) -> bool:
    pid = stale.name.removeprefix(f".{target.name}.tmp-").partition("-")[0]
    if not pid.isdigit():
        return False  # no writer named (or an older name): litter
    try:
        os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, as another user's
    return True


def _remove_stale_siblings(target: Path) -> None:
    """Temporary siblings of ``target`` that a killed writer (``kill -9``, a power cut) left behind; a
    sibling whose writer still runs is a write in progress, and stays."""
    for stale in target.parent.glob(f".{glob.escape(target.name)}.tmp-*"):
        if _writer_alive(stale, target):
            continue
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)


def _raise_storage_failure(exc: BaseException, tmp: Path, target: Path) -> None:
    """A full disk or a file-size limit while writing into ``tmp``: one line naming the output, its cause
    and the fix (``errors.write_failure_into``); the old output is still in place."""
    failure = write_failure_into(exc, tmp, target)
    if failure is not None:
        raise failure from None


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary directory that replaces ``target`` on success.

    The temporary directory is a hidden sibling of ``target`` (same file system). On any exception
    it is removed and ``target`` is left as it was. On success the two are swapped in one atomic
    step where the system can (Linux), so a crash at any moment leaves the old or the new output,
    never neither; the old one is deleted only after the swap. Elsewhere the old output is renamed
    aside, the new one into place, and a later call puts the old one back if a crash fell between.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(target)
    _remove_stale_siblings(target)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), dir=target.parent))
    os.chmod(tmp, _default_mode(directory=True))
    try:
        try:
            yield tmp
        except (OSError, RuntimeError, WriteError) as exc:
            _raise_storage_failure(exc, tmp, target)
            raise
        if not target.exists():
            os.replace(tmp, target)
        elif target.is_dir() and _exchange(tmp, target):
            pass  # tmp now holds the old output, deleted below
        else:
            backup = _backup_of(target)
            os.replace(target, backup)
            os.replace(tmp, target)
            shutil.rmtree(backup) if backup.is_dir() else backup.unlink()
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_siblings(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), dir=path.parent)
    os.close(fd)
    os.chmod(tmp, _default_mode(directory=False))
    try:
        try:
            yield Path(tmp)
        except (OSError, RuntimeError) as exc:
            _raise_storage_failure(exc, Path(tmp), path)
            raise
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` via a temporary file + rename."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


def save_png(image, path: str | os.PathLike) -> None:
    """Write a PIL image as PNG via a temporary file + rename."""
    with atomic_file(path) as tmp:
        image.save(tmp, format="PNG")
