"""Where runs go: ``MLFLOW_TRACKING_URI`` when set (a server URL, a database), else a SQLite file
``mlflow.db`` at the repository root with artifacts in ``mlartifacts/`` beside it. "Repository root"
is ``DVC_ROOT`` when DVC sets it: ``dvc exp run --temp/--queue`` runs stages in a copy under
``.dvc/tmp/exps/``, and a store relative to that copy would be thrown away with it.

An unreachable server fails within seconds with one line naming the URI, instead of MLflow's
default of minutes of retries; so does a server that refuses the credentials (401), forbids a write
(403) or cannot reach its own database or artifact store (5xx) — each with its own fix
(``errors.store_failure``). Two quick retries remain: a server that answered one request with a 500
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

from ..errors import TrackingError, store_failure
from .orphans import close_orphans

DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"
SQLITE_BUSY_TIMEOUT = 60
#: tracking URI schemes MLflow can store runs in (its file store is refused by MLflow >= 3.13)
SUPPORTED_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks")


def project_root() -> Path:
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or (
        f"sqlite:///{project_root() / DEFAULT_DB}?timeout={SQLITE_BUSY_TIMEOUT}"
    )


def uses_default_store() -> bool:
    return not os.environ.get("MLFLOW_TRACKING_URI")


def check_scheme(uri: str) -> None:
    """A URI MLflow cannot store runs in is a configuration mistake, not an unreachable server."""
    match = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://", uri)
    scheme = match.group(1).split("+")[0].lower() if match else "file"
    if scheme not in SUPPORTED_SCHEMES:
        raise TrackingError(
            f"MLFLOW_TRACKING_URI {uri} uses the scheme '{scheme}', which MLflow cannot track runs in; "
            f"use one of {', '.join(s + '://' for s in SUPPORTED_SCHEMES)} or unset it for the local SQLite store"
        )


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
