"""User-facing errors, and the one place where a library's failure becomes one.

Every problem a user can fix (bad params, a missing or corrupt archive, a wrong
checksum) is raised as a :class:`PipelineError`. Stage scripts turn it into one
line on stderr and a non-zero exit instead of a traceback, because the message
itself names the problem and the fix; a traceback would only bury it.

Failures that come from a library — a full disk under numpy, torch or SQLite, a tracking server
that refuses or is gone, a damaged file any reader may notice — are translated here and nowhere
else (:func:`translate`, :func:`write_failure`, :func:`store_failure`, :func:`reading`). Each reads
the library's types first (an ``OSError``'s errno, SQLite's result code, MLflow's error code,
requests' exception classes along the cause chain) and its wording only where the library gives
nothing else (numpy's and torch's short writes, urllib3's retry message); ``tests/test_errors.py``
makes the real library raise every translated case, so an upgrade that changes one fails there.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import yaml
    from pydantic import BaseModel, ValidationError  # noqa: F401 (annotations)


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


class TrackingError(PipelineError):
    """The MLflow store cannot be reached or used."""


def causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or during (``__cause__``, else ``__context__``): MLflow
    and SQLAlchemy wrap the library error that says what happened."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


#: errno values that mean "the storage is full or limited", not "the program is wrong"
DISK_FULL_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EFBIG: "file too large for the file-size limit"}
if hasattr(errno, "EDQUOT"):
    DISK_FULL_ERRNOS[errno.EDQUOT] = "disk quota exceeded"


#: how writers that lose the errno report a short write (numpy's tofile, torch's PytorchStreamWriter); read
#: only when the system shows no cause (:func:`storage_exhausted`)
SHORT_WRITE = re.compile(r"\d+ requested and \d+ written|write failed|iostream error|unexpected pos \d+")


def sqlite_full(exc: BaseException) -> bool:
    """SQLite's own result code SQLITE_FULL ("database or disk is full"), wherever SQLAlchemy and MLflow
    wrapped it; the wording only where the wrapper dropped the original exception."""
    for cause in causes(exc):
        if isinstance(cause, sqlite3.Error) and getattr(cause, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            return True
    return "database or disk is full" in str(exc)


def shorten(text: str, limit: int = 200) -> str:
    """The first line of ``text``, cut at a word boundary with an ellipsis when longer than ``limit``."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    if len(line) <= limit:
        return line
    return line[:limit].rsplit(" ", 1)[0] + " …"


def first_line(exc: BaseException, limit: int = 160) -> str:
    """``Type: first line of the message`` (:func:`shorten`), for a cause inside a one-line error."""
    text = shorten(str(exc), limit)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


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
    elif sqlite_full(exc):
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


def write_failure_into(exc: BaseException, tmp: Path, target: Path) -> PipelineError | None:
    """:func:`write_failure` for a write into ``tmp``, the temporary sibling that replaces ``target`` on
    success (``io.atomic_*``): the line names ``target`` (the file inside it when the error says which),
    never the temporary path the user has no use for; None for an error that is no storage failure."""
    if isinstance(exc, WriteError):  # from an atomic_file inside an atomic_directory: name the real path
        return WriteError(str(exc).replace(str(tmp), str(target)))
    filename = getattr(exc, "filename", None)
    where = Path(str(filename).replace(str(tmp), str(target))) if filename else target
    return write_failure(exc, where, written=tmp)


# --- params files: pydantic's and YAML's errors, one line each ------------------------------------------
def _dotted(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


def _model_at(loc: tuple[Any, ...], root: type[BaseModel]) -> type[BaseModel] | None:
    """The pydantic model under ``root`` that owns the key at ``loc`` (to list its allowed keys)."""
    from pydantic import BaseModel

    model: Any = root
    for item in loc[:-1]:
        if isinstance(item, int):
            continue
        field = model.model_fields.get(item) if isinstance(model, type) else None
        if field is None:
            return None
        annotation = field.annotation
        for candidate in getattr(annotation, "__args__", ()) or (annotation,):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                model = candidate
                break
        else:
            return None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _one_line(text: str, limit: int = 100) -> str:
    """``text`` as it may stand inside a one-line message: control characters escaped (a key "\\r" must
    not break the line), cut at ``limit`` characters."""
    text = text if text.isprintable() else text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def format_validation_error(error: ValidationError, source: str, root: type[BaseModel]) -> str:
    """One line per problem of validating ``source`` as ``root`` (a pydantic model): ``<file>: <key> =
    <value>: <what is allowed>``; an unknown key lists the keys allowed where it stands."""
    lines = []
    for err in error.errors():
        loc = tuple(err["loc"])
        key = _one_line(_dotted(loc)) or "<root>"
        if err["type"] == "extra_forbidden":
            owner = _model_at(loc, root)
            allowed = ", ".join(owner.model_fields) if owner else "see README"
            lines.append(f"{source}: unknown key '{key}' (allowed here: {allowed})")
        elif err["type"] == "missing":
            lines.append(f"{source}: missing key '{key}'")
        else:
            msg = _one_line(err["msg"].removeprefix("Value error, "), 300)
            if isinstance(err["input"], dict):  # a check across the keys of a section (or of sections)
                lines.append(f"{source}: {key}: {msg}" if loc else f"{source}: {msg}")
            else:
                lines.append(f"{source}: {key} = {_one_line(repr(err['input']))} is invalid: {msg}")
    return "\n".join(lines)


def describe_yaml_error(exc: yaml.YAMLError) -> str:
    """Where the mistake is: YAML notices it where parsing fails — often the line *after* an unclosed
    bracket or quote — so name the line the broken construct started on too."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    problem_mark, context_mark = getattr(exc, "problem_mark", None), getattr(exc, "context_mark", None)
    text = problem
    if problem_mark is not None:
        text += f" at line {problem_mark.line + 1}, column {problem_mark.column + 1}"
    context = getattr(exc, "context", None)
    if context and context_mark is not None and (problem_mark is None or context_mark.line != problem_mark.line):
        text += f" ({context} that starts at line {context_mark.line + 1}, column {context_mark.column + 1})"
    return text


# --- the tracking store ------------------------------------------------------------------------------------
def http_status(exc: BaseException) -> int | None:
    """The HTTP status of a failed MLflow call: MLflow's error code where it sets one (a non-JSON answer:
    401 -> UNAUTHENTICATED, 403 -> PERMISSION_DENIED, 503 -> TEMPORARILY_UNAVAILABLE ...; INTERNAL_ERROR
    is also its default, so it says nothing), else the status urllib3 gave up on after its retries
    (its ``ResponseError`` carries it only in its message, ``ResponseError.SPECIFIC_ERROR``)."""
    from urllib3.exceptions import ResponseError

    error_code = getattr(exc, "error_code", None)
    if error_code not in (None, "INTERNAL_ERROR") and hasattr(exc, "get_http_status_code"):
        return exc.get_http_status_code()
    retried = re.compile(re.escape(ResponseError.SPECIFIC_ERROR).replace(r"\{status_code\}", r"(\d{3})"))
    for cause in causes(exc):
        reasons = [cause, getattr(cause, "reason", None), *(getattr(cause, "args", None) or ())]
        for reason in reasons:
            found = retried.search(str(getattr(reason, "reason", reason) or ""))
            if found:
                return int(found.group(1))
    if error_code == "INTERNAL_ERROR" and (found := re.search(r"error code (\d{3}) != ", str(exc))):
        return int(found.group(1))  # a 500 answered without JSON: MLflow maps it to its default code
    return None


def store_failure(uri: str, exc: BaseException, status: int | None = None) -> TrackingError:
    """One line for a store that cannot be used, naming the cause and what to do about it (``status``:
    :func:`http_status` of ``exc``, where the caller has it already)."""
    text = str(exc)
    cause = shorten(text) or type(exc).__name__
    status = http_status(exc) if status is None else status
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if status == 401:
        who = f"the credentials of user '{user}'" if user else "requests without credentials"
        return TrackingError(
            f"MLflow server {uri} refused {who} (401 Unauthorized); set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD to a user of that server (the team stack writes them to <state folder>/env.sh)"
        )
    if status == 403:
        return TrackingError(
            f"MLflow server {uri}: user '{user}' may not write there (403 Permission denied); use a user with "
            "EDIT permission on the experiment, or ask the server's admin to grant it"
        )
    if status is not None and status >= 500:
        part = "artifact store" if "mlflow-artifacts" in text else "database"
        return TrackingError(
            f"MLflow server {uri} failed ({status}: its {part} is likely down or full); check the server and "
            "its log, then re-run (a training resumes from its checkpoint)"
        )
    return TrackingError(
        f"MLflow tracking store {uri} is not reachable ({cause}); start the server or "
        "unset MLFLOW_TRACKING_URI to use the local SQLite store"
    )


def tracking_failure(exc: BaseException, uri: str) -> TrackingError | None:
    """The one-line error for a failed call to the tracking server ``uri`` in the middle of a stage (the
    server died, its database or artifact store went down, a user may not write); None for anything
    else, which keeps its traceback. A failed call is a requests/urllib3 error anywhere on the cause chain
    (refused, timed out, retried to the end) or an answer of 401, 403 or 5xx (:func:`http_status`)."""
    if isinstance(exc, TrackingError):
        return exc
    transport = any(type(c).__module__.split(".")[0] in ("requests", "urllib3") for c in causes(exc))
    status = http_status(exc)
    if not (transport or status in (401, 403) or (status or 0) >= 500):
        return None
    return store_failure(uri, exc, status)


def translate(exc: BaseException) -> PipelineError | None:
    """What a stage prints for an exception that is no :class:`PipelineError`: a storage failure, or a
    tracking server's failure (only where the stage has loaded MLflow, the only way to meet one); None:
    a bug, which keeps its traceback."""
    import sys

    failure = write_failure(exc, getattr(exc, "filename", None))
    if failure is None and "mlflow" in sys.modules:
        from .tracking.store import tracking_uri

        failure = tracking_failure(exc, tracking_uri())
    return failure
