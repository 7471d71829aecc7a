"""User-facing errors.

Every problem a user can fix (bad params, a missing or corrupt archive, a wrong
checksum) is raised as a :class:`PipelineError`. Stage scripts turn it into one
line on stderr and a non-zero exit instead of a traceback, because the message
itself names the problem and the fix; a traceback would only bury it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Iterator
from pathlib import Path


class PipelineError(Exception):
    """A problem the user can fix; its message names the problem and the fix."""


class ConfigError(PipelineError):
    """params.yaml is missing, unreadable or does not validate."""


class DataSourceError(PipelineError):
    """No configured data source exists and verifies."""


class ArchiveError(PipelineError):
    """An archive is corrupt, truncated, unsafe or of an unknown layout."""


class DatasetError(PipelineError):
    """Decoded data fails validation (shapes, labels, per-class counts)."""


class WriteError(PipelineError):
    """An output could not be written (disk full, file-size or quota limit); the previous one is kept."""


#: errno values that mean "the storage is full or limited", not "the program is wrong"
DISK_FULL_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EFBIG: "file too large for the file-size limit"}
if hasattr(errno, "EDQUOT"):
    DISK_FULL_ERRNOS[errno.EDQUOT] = "disk quota exceeded"


#: how writers that lose the errno report a short write (numpy's tofile, torch's PytorchStreamWriter)
SHORT_WRITE = re.compile(r"\d+ requested and \d+ written|write failed|iostream error|unexpected pos \d+")


def first_line(exc: BaseException, limit: int = 160) -> str:
    """``Type: first line of the message`` (cut at ``limit``), for a cause inside a one-line error."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:limit]}" if text else type(exc).__name__


def storage_exhausted(written: os.PathLike | str | None) -> str | None:
    """Why writing ``written`` (a file or a folder of files) may have failed, read off the system:
    a file at the process's file-size limit (``ulimit -f``), or a file system with under 1 MiB free.
    For writers that lose the errno, this tells a full disk from a bug without trusting their wording."""
    if written is None or not Path(written).exists():
        return None
    written = Path(written)
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        soft = None if soft == resource.RLIM_INFINITY else soft
    except ImportError:  # not a Unix
        soft = None
    if soft is not None:
        files = [written] if written.is_file() else [f for f in written.rglob("*") if f.is_file()]
        if any(f.stat().st_size >= soft for f in files):
            return DISK_FULL_ERRNOS[errno.EFBIG] + ", EFBIG"
    stat = os.statvfs(written)
    if stat.f_bavail * stat.f_frsize < 1 << 20:
        return DISK_FULL_ERRNOS[errno.ENOSPC] + ", ENOSPC"
    return None


def write_failure(
    exc: BaseException, path: os.PathLike | str | None = None, written: os.PathLike | str | None = None
) -> WriteError | None:
    """The one-line error for a write (to ``path`` when known; ``written`` is what was being written,
    e.g. its temporary file) that failed because storage ran out; None for any other error.

    Python raises ``OSError`` with the errno; numpy's ``tofile`` an errno-less ``OSError`` ("N requested
    and M written") and ``torch.save``'s C++ writer a ``RuntimeError`` (wording varies with where it
    stopped): for those the cause is read off the system (:func:`storage_exhausted`). SQLite (the MLflow
    store) says "database or disk is full", wrapped by SQLAlchemy and MLflow."""
    text = str(exc)
    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
        cause = f"{DISK_FULL_ERRNOS[exc.errno]}, {errno.errorcode[exc.errno]}"
    elif "database or disk is full" in text:
        cause = "SQLite: database or disk is full"
        path = path or "the MLflow store (mlflow.db)"
    elif isinstance(exc, (OSError, RuntimeError)) and (diagnosis := storage_exhausted(written)):
        cause = diagnosis
    elif isinstance(exc, (OSError, RuntimeError)) and SHORT_WRITE.search(text):
        cause = "the write stopped short: disk full or a file-size limit"
    else:
        return None
    fix = "free space on its file system or raise the file-size limit (`ulimit -f`), then re-run"
    if path is None:
        return WriteError(f"a write failed ({cause}); {fix}")
    where = Path(path)
    return WriteError(f"{where}: could not be written ({cause}); any previous {where} is kept as it was; {fix}")


@contextlib.contextmanager
def reading(path: os.PathLike | str, stage: str | None = None) -> Iterator[None]:
    """Turn any failure to parse the file at ``path`` into one line naming it and the stage that
    re-creates it (``stage``, else the one ``paths.PRODUCERS`` names). A truncated ``.npy`` raises
    ValueError, a garbled ``.npz`` BadZipFile, a missing array KeyError, a damaged torch file
    RuntimeError or UnpicklingError: to the user they all mean one thing, so they get one message
    instead of a traceback from whichever library noticed."""
    try:
        yield
    except PipelineError:
        raise
    except Exception as exc:
        from .paths import producer

        stage = stage or producer(path)
        fix = f"re-create it with `dvc repro -f {stage}`" if stage else "replace it with a good copy"
        raise PipelineError(f"{path}: damaged or not the file expected here ({first_line(exc)}); {fix}") from None
