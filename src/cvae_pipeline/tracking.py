"""MLflow tracking shared by every stage.

Where runs go: ``MLFLOW_TRACKING_URI`` when set (a server URL, a database),
else a SQLite file ``mlflow.db`` at the repository root with artifacts in
``mlartifacts/`` beside it. "Repository root" is ``DVC_ROOT`` when DVC sets it:
``dvc exp run --temp/--queue`` runs stages in a copy under ``.dvc/tmp/exps/``,
and a store relative to that copy would be thrown away with it.

An unreachable server fails within seconds with one line naming the URI,
instead of MLflow's default of minutes of retries — or, with ``mlflow.required:
false``, the stage warns and goes on untracked (``models/mlflow_run.json`` then
records no run, and later stages skip their logging too).

Several stages may write the SQLite store at once (``dvc queue start -j 2``):
creating its schema is serialised by a file lock (two first-time migrations at
once corrupt it), and SQLite waits up to ``SQLITE_BUSY_TIMEOUT`` seconds for
another writer instead of failing with "database is locked".
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any

from .errors import PipelineError

DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"
RUN_FILE = Path("models/mlflow_run.json")
SAMPLES_RUN_FILE = Path("data/samples/mlflow_run.json")  # the run ``sample`` logged to; ``evaluate`` logs there too
SQLITE_BUSY_TIMEOUT = 60


class TrackingError(PipelineError):
    """The MLflow store cannot be reached or used."""


def project_root() -> Path:
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / DEFAULT_DB}?timeout={SQLITE_BUSY_TIMEOUT}"


def _uses_default_store() -> bool:
    return not os.environ.get("MLFLOW_TRACKING_URI")


def _unreachable(uri: str, exc: Exception) -> TrackingError:
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return TrackingError(
        f"MLflow tracking store {uri} is not reachable ({first_line[:200]}); start the server or "
        "unset MLFLOW_TRACKING_URI to use the local SQLite store"
    )


def configure_store() -> str:
    """Point MLflow at the store (failing fast when it is unreachable); returns the URI."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    import mlflow

    default_store = _uses_default_store()
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        if default_store:
            from filelock import FileLock

            with FileLock(str(project_root() / f"{DEFAULT_DB}.lock"), timeout=300):
                mlflow.search_experiments(max_results=1)  # creates/migrates the schema, once
        else:
            mlflow.search_experiments(max_results=1)
    except Exception as exc:  # requests/SQLAlchemy/MLflow errors all mean: the store is not usable
        raise _unreachable(uri, exc) from None
    return uri


def configure(experiment: str) -> str:
    """Point MLflow at the store and return the experiment's id (created when missing)."""
    import mlflow

    default_store = _uses_default_store()  # decide before set_tracking_uri(), which exports the variable
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
        raise _unreachable(uri, exc) from None


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=project_root())
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def run_tags(stage: str) -> dict[str, str]:
    """Tags that say where a run came from: commit, DVC experiment, baseline, machine."""
    tags = {"stage": stage, "machine": f"{socket.gethostname()} ({platform.machine()}, {os.cpu_count()} cpus)"}
    if commit := git_commit():
        tags["git_commit"] = commit
        tags["mlflow.source.git.commit"] = commit
    if name := os.environ.get("DVC_EXP_NAME"):
        tags["dvc_experiment"] = name
    if baseline := os.environ.get("DVC_EXP_BASELINE_REV"):
        tags["dvc_baseline_rev"] = baseline
    return tags


def flatten_params(params: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"train": {"lr": 1e-3}}`` -> ``{"train.lr": "0.001"}``; lists become JSON strings."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_params(value, f"{name}."))
        elif isinstance(value, list):
            flat[name] = json.dumps(value)[:6000]
        else:
            flat[name] = str(value)
    return flat


def write_run_file(run_id: str | None, experiment_id: str | None, model_uri: str | None = None,
                   path: Path = RUN_FILE) -> None:
    """Record the run so later stages (sample, evaluate) log into the same MLflow run
    (``train`` writes ``models/mlflow_run.json``; ``sample`` writes ``data/samples/mlflow_run.json``
    for ``evaluate``, naming the run it used, see :func:`results_run`).

    ``run_id`` None: training ran untracked (``mlflow.required: false`` and no store).
    """
    from .io import write_json_atomic

    write_json_atomic(path, {"run_id": run_id, "experiment_id": experiment_id, "model_uri": model_uri,
                             "tracking_uri": tracking_uri() if run_id else None})


def read_run_file(path: Path = RUN_FILE) -> dict:
    if not Path(path).is_file():
        raise TrackingError(f"{path}: missing; run `dvc repro train` first")
    return json.loads(Path(path).read_text())


def warn_untracked(exc: Exception) -> None:
    print(f"warning: {exc}; going on without MLflow tracking (mlflow.required is false)", flush=True)


@contextlib.contextmanager
def recorded_run(required: bool = True, run_file: Path = RUN_FILE):
    """Re-open the training's MLflow run (from ``models/mlflow_run.json``) so a later stage logs into it.

    Yields None — the stage skips its logging — when training ran untracked, or when the store is
    unreachable and ``required`` is False.
    """
    import mlflow

    info = read_run_file(run_file)
    if info.get("run_id") is None:
        print("note: the training was not tracked in MLflow; nothing to log to", flush=True)
        yield None
        return
    try:
        configure_store()
        run = mlflow.start_run(run_id=info["run_id"])
    except TrackingError as exc:
        if required:
            raise
        warn_untracked(exc)
        yield None
        return
    except mlflow.exceptions.MlflowException as exc:
        raise TrackingError(
            f"MLflow run {info['run_id']} (from {run_file}) is not in {tracking_uri()} ({exc.message[:120]}); "
            "was it trained against another MLFLOW_TRACKING_URI? Re-run `dvc repro -f train`"
        ) from None
    with run:
        yield run


@contextlib.contextmanager
def results_run(stage: str, settings: dict[str, str], required: bool = True, run_file: Path = RUN_FILE):
    """The run a stage logs its results under ``settings`` (``{"sample.temperature": "0.8", ...}``) into.

    That is the run ``run_file`` names (the training's, for ``sample``) — unless that run already
    holds results made with other values of those settings. Then it is a new run nested under it
    (``mlflow.parentRunId``), named after the DVC experiment, carrying the parent's params with the
    new settings and its final training metrics. Why: ``dvc exp run -S sample.temperature=0.8`` re-runs
    only ``sample`` and ``evaluate`` on the same trained model; logging into the training's run would
    overwrite the first experiment's FID, and the MLflow UI could no longer show the two side by side.
    The run used is recorded in the stage's output (see :func:`write_run_file`) for the next stage.
    """
    import mlflow

    with recorded_run(required, run_file) as parent:
        if parent is None:
            yield None
            return
        recorded = {key: parent.data.tags[key] for key in settings if key in parent.data.tags}
        changed = {key: settings[key] for key, value in recorded.items() if settings[key] != value}
        if not changed:
            yield parent
            return
        name = os.environ.get("DVC_EXP_NAME") or (
            f"{parent.info.run_name} " + ", ".join(f"{key}={value}" for key, value in changed.items()))
        inherited = {key: value for key, value in parent.data.tags.items() if key.startswith(("sample.", "samples."))}
        tags = inherited | run_tags(stage) | {
            "trained_in_run": parent.data.tags.get("trained_in_run", parent.info.run_id)}
        with mlflow.start_run(experiment_id=parent.info.experiment_id, run_name=name, nested=True, tags=tags) as child:
            mlflow.log_params({**parent.data.params, **{k: v for k, v in settings.items() if k in parent.data.params}})
            mlflow.log_metrics({key: value for key, value in parent.data.metrics.items() if key.startswith("final_")})
            print(f"MLflow run {parent.info.run_id} holds results of other settings "
                  f"({', '.join(f'{k}: {recorded[k]}' for k in changed)}); logging to new run {child.info.run_id}, "
                  "nested under it", flush=True)
            yield child


def register_evaluated_model(name: str, model_uri: str, run_id: str, metrics: dict, protocol: str):
    """Register the run's logged model under ``name`` with its scores in the version's tags and
    description; a re-evaluation of the same model updates its version instead of adding one (a
    re-sampled run has a new generator, with its new GMM, and gets a new version)."""
    import mlflow

    client = mlflow.MlflowClient()
    scores = {key: metrics[key] for key in ("fid", "kid_mean", "kid_std", "class_consistency", "precision",
                                            "recall") if key in metrics}
    tags = {key: f"{value:.6g}" for key, value in scores.items()} | {"fid_protocol": protocol}
    existing = [v for v in client.search_model_versions(f"name='{name}'") if v.run_id == run_id and v.source == model_uri]
    if existing:
        version = existing[0]
        for key, value in tags.items():
            client.set_model_version_tag(name, version.version, key, value)
    else:
        version = mlflow.register_model(model_uri, name, tags=tags)
    description = (f"FID {scores['fid']:.2f} ({protocol}); KID {scores['kid_mean']:.4f} ± {scores['kid_std']:.4f}; "
                   f"class consistency {scores['class_consistency']:.3f}; precision {scores['precision']:.3f}, "
                   f"recall {scores['recall']:.3f}. MLflow run {run_id}.")
    client.update_model_version(name, version.version, description=description)
    return version
