"""Where runs go: ``MLFLOW_TRACKING_URI`` when set (a server URL, a database), else a SQLite file
``mlflow.db`` at the repository root with artifacts in ``mlartifacts/`` beside it. "Repository root"
is ``DVC_ROOT`` when DVC sets it: ``dvc exp run --temp/--queue`` runs stages in a copy under
``.dvc/tmp/exps/``, and a store relative to that copy would be thrown away with it.

An unreachable server fails within seconds with one line naming the URI, instead of MLflow's
default of minutes of retries; so does a server that refuses the credentials (401), forbids a write
(403) or cannot reach its own database or artifact store (5xx) — each with its own fix
(:func:`store_failure`). Two quick retries remain: a server that answered one request with a 500
closes that connection, and without a retry the next request (marking the run FAILED) would die on it.

Several stages may write the SQLite store at once (``dvc queue
start -j 2``): creating its schema is serialised by a file lock (two first-time migrations at once
corrupt it), and SQLite waits up to ``SQLITE_BUSY_TIMEOUT`` seconds for another writer instead of
failing with "database is locked".
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import PipelineError
from .orphans import close_orphans

DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"
SQLITE_BUSY_TIMEOUT = 60
#: tracking URI schemes MLflow can store runs in (its file store is refused by MLflow >= 3.13)
SUPPORTED_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks")


class TrackingError(PipelineError):
    """The MLflow store cannot be reached or used."""


def project_root() -> Path:
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or (
        f"sqlite:///{project_root() / DEFAULT_DB}?timeout={SQLITE_BUSY_TIMEOUT}"
    )


def uses_default_store() -> bool:
    return not os.environ.get("MLFLOW_TRACKING_URI")


def shorten(text: str, limit: int = 200) -> str:
    """The first line of ``text``, cut at a word boundary with an ellipsis when longer than ``limit``."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    if len(line) <= limit:
        return line
    return line[:limit].rsplit(" ", 1)[0] + " …"


def check_scheme(uri: str) -> None:
    """A URI MLflow cannot store runs in is a configuration mistake, not an unreachable server."""
    match = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://", uri)
    scheme = match.group(1).split("+")[0].lower() if match else "file"
    if scheme not in SUPPORTED_SCHEMES:
        raise TrackingError(
            f"MLFLOW_TRACKING_URI {uri} uses the scheme '{scheme}', which MLflow cannot track runs in; "
            f"use one of {', '.join(s + '://' for s in SUPPORTED_SCHEMES)} or unset it for the local SQLite store"
        )


def _status(exc: Exception) -> int | None:
    """The HTTP status of a failed MLflow call: typed where MLflow gives it (an ``MlflowException``'s
    error code, e.g. PERMISSION_DENIED -> 403), else read from the REST client's wording ("error code 403
    != 200", "too many 503 error responses")."""
    error_code = getattr(exc, "error_code", None)
    if error_code not in (None, "INTERNAL_ERROR") and hasattr(exc, "get_http_status_code"):
        return exc.get_http_status_code()
    match = re.search(r"error code (\d{3})|too many (\d{3}) error responses", str(exc))
    return int(match.group(1) or match.group(2)) if match else None


def store_failure(uri: str, exc: Exception) -> TrackingError:
    """One line for a store that cannot be used, naming the cause and what to do about it."""
    text = str(exc)
    cause = shorten(text) or type(exc).__name__
    status = _status(exc)
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


def tracking_failure(exc: BaseException) -> TrackingError | None:
    """The one-line error for an MLflow REST or connection failure in the middle of a stage (the
    server died, its database or artifact store went down, a user may not write); None for anything
    else, which keeps its traceback."""
    if isinstance(exc, TrackingError):
        return exc
    module = type(exc).__module__
    is_rest = module.startswith("mlflow") and "API request to" in str(exc)
    if not (is_rest or module.startswith(("requests", "urllib3"))):
        return None
    return store_failure(tracking_uri(), exc)


def configure_store() -> str:
    """Point MLflow at the store (failing fast when it is unreachable); returns the URI."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    import mlflow

    default_store = uses_default_store()
    uri = tracking_uri()
    check_scheme(uri)
    mlflow.set_tracking_uri(uri)
    try:
        if default_store:
            from filelock import FileLock

            with FileLock(str(project_root() / f"{DEFAULT_DB}.lock"), timeout=300):
                mlflow.search_experiments(max_results=1)  # creates/migrates the schema, once
        else:
            mlflow.search_experiments(max_results=1)
        close_orphans()  # runs left RUNNING by a stage that was killed
    except Exception as exc:  # requests/SQLAlchemy/MLflow errors all mean: the store is not usable
        raise store_failure(uri, exc) from None
    return uri


def configure(experiment: str) -> str:
    """Point MLflow at the store and return the experiment's id (created when missing)."""
    import mlflow

    default_store = uses_default_store()  # decide before set_tracking_uri(), which exports the variable
    uri = configure_store()
    try:
        found = mlflow.get_experiment_by_name(experiment)
        if found is not None:
            return found.experiment_id
        artifact_location = (project_root() / DEFAULT_ARTIFACTS).as_uri() if default_store else None
        try:
            return mlflow.create_experiment(experiment, artifact_location=artifact_location)
        except mlflow.exceptions.MlflowException:
            found = mlflow.get_experiment_by_name(experiment)  # created concurrently by another stage
            if found is None:
                raise
            return found.experiment_id
    except Exception as exc:
        raise store_failure(uri, exc) from None
