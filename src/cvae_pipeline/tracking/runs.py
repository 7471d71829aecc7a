"""Which MLflow run a stage logs into.

``train`` starts the run (or resumes its checkpoint's). ``prior``, ``sample`` and ``evaluate`` log into
the run the previous stage's run file names — unless that run already holds results made with other settings
(then a new run nested under it), or this store does not know it (a clone that pulled the model from
a DVC remote but not the git-ignored ``mlflow.db``: then a new top-level run that names the training
run it came from), or tracking is off (``mlflow.required: false`` and no store: no run at all).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from ..paths import TRAIN_RUN_FILE
from .handoff import read_run_file
from .orphans import claim
from .store import TrackingError, configure, configure_store, shorten
from .tags import run_tags


def warn_untracked(exc: Exception) -> None:
    print(f"warning: {exc}; going on without MLflow tracking (mlflow.required is false)", flush=True)


def _run_name(default: str | None = None) -> str | None:
    return os.environ.get("DVC_EXP_NAME") or default


@contextlib.contextmanager
def recorded_run(
    required: bool = True,
    run_file: Path = TRAIN_RUN_FILE,
    experiment: str = "cvae-cifar10",
    params: dict[str, str] | None = None,
    stage: str = "sample",
):
    """Re-open the run ``run_file`` names so a later stage logs into it.

    Yields None — the stage skips its logging — when training ran untracked, or when the store is
    unreachable and ``required`` is False. When the store does not hold that run, yields a new run
    (in ``experiment``, with ``params``, tagged ``trained_in_run``) instead of failing.
    """
    import mlflow

    info = read_run_file(run_file)
    if info.get("run_id") is None:
        print("note: the training was not tracked in MLflow; nothing to log to", flush=True)
        yield None
        return
    try:
        configure_store()
        try:
            run = mlflow.start_run(run_id=info["run_id"])
            claim(run.info.run_id)
        except mlflow.exceptions.MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":  # a store that answers, but not usably
                raise TrackingError(
                    f"MLflow run {info['run_id']} (from {run_file}) cannot be reopened: {shorten(exc.message)}"
                ) from None
            run = None  # this store never had it: the model was trained against another one
        if run is None:
            experiment_id = configure(experiment)
            tags = run_tags(stage) | {"trained_in_run": info["run_id"]}
            run = mlflow.start_run(experiment_id=experiment_id, run_name=_run_name(), tags=tags)
            if params:
                mlflow.log_params(params)
            print(
                f"note: MLflow run {info['run_id']} (from {run_file}) is not in this store (the model was "
                f"trained against another one); logging to new run {run.info.run_id}",
                flush=True,
            )
    except TrackingError as exc:
        if required:
            raise
        warn_untracked(exc)
        yield None
        return
    with run:
        yield run


@contextlib.contextmanager
def results_run(
    stage: str,
    settings: dict[str, str],
    required: bool = True,
    run_file: Path = TRAIN_RUN_FILE,
    experiment: str = "cvae-cifar10",
    params: dict[str, str] | None = None,
):
    """The run a stage logs its results under ``settings`` (``{"sample.temperature": "0.8", ...}``) into.

    That is the run ``run_file`` names (the training's, for ``sample``) — unless that run already
    holds results made with other values of those settings. Then it is a new run nested under it
    (``mlflow.parentRunId``), named after the DVC experiment, carrying the parent's params with the
    new settings and its final training metrics. Why: ``dvc exp run -S sample.temperature=0.8`` re-runs
    only ``sample`` and ``evaluate`` on the same trained model; logging into the training's run would
    overwrite the first experiment's FID, and the MLflow UI could no longer show the two side by side.
    """
    import mlflow

    with recorded_run(required, run_file, experiment, params, stage) as parent:
        if parent is None:
            yield None
            return
        recorded = {key: parent.data.tags[key] for key in settings if key in parent.data.tags}
        changed = {key: settings[key] for key, value in recorded.items() if settings[key] != value}
        if not changed:
            yield parent
            return
        name = _run_name(f"{parent.info.run_name} " + ", ".join(f"{key}={value}" for key, value in changed.items()))
        # what the parent's results were made with, for the runs downstream of it; a new prior's run holds no
        # samples yet, so it inherits none of the parent's sampling tags (sample would think it held some)
        downstream = () if stage == "prior" else ("prior.", "sample.", "samples.")
        inherited = {key: value for key, value in parent.data.tags.items() if downstream and key.startswith(downstream)}
        tags = (
            inherited | run_tags(stage) | {"trained_in_run": parent.data.tags.get("trained_in_run", parent.info.run_id)}
        )
        with mlflow.start_run(experiment_id=parent.info.experiment_id, run_name=name, nested=True, tags=tags) as child:
            mlflow.log_params({**parent.data.params, **{k: v for k, v in settings.items() if k in parent.data.params}})
            mlflow.log_metrics({key: value for key, value in parent.data.metrics.items() if key.startswith("final_")})
            was = ", ".join(f"{k}: {recorded[k]}" for k in changed)
            print(
                f"MLflow run {parent.info.run_id} holds results of other settings ({was}); "
                f"logging to new run {child.info.run_id}, nested under it",
                flush=True,
            )
            yield child


def start_training_run(extra: dict, history: list[dict], params, params_file: Path):
    """The MLflow run of a training: the checkpoint's (``extra["mlflow_run_id"]``, when resuming) or a
    new one named after the DVC experiment, with the params and ``params.yaml`` attached. A new run
    for a checkpoint that already has epochs (it trained untracked, or its run is gone) gets the
    per-epoch metrics of those epochs, so it does not end FINISHED with nothing but final figures.
    None when tracking is off (``mlflow.required: false`` and the store unreachable)."""
    import mlflow

    from .tags import flatten_params

    try:
        experiment_id = configure(params.mlflow.experiment)
    except TrackingError as exc:
        if params.mlflow.required:
            raise
        warn_untracked(exc)
        return None
    if run_id := extra.get("mlflow_run_id"):
        try:
            run = mlflow.start_run(run_id=run_id)
            claim(run_id)
            backfill_epochs(history)
            return run
        except mlflow.exceptions.MlflowException:
            print(f"note: MLflow run {run_id} of the checkpoint is gone; starting a new run")
    run = mlflow.start_run(experiment_id=experiment_id, run_name=_run_name(), tags=run_tags("train"))
    mlflow.log_params(flatten_params(params.model_dump()))
    if Path(params_file).is_file():
        mlflow.log_artifact(str(params_file), artifact_path="pipeline")
    for record in history:  # epochs the checkpoint trained before this run existed
        mlflow.log_metrics({k: float(v) for k, v in record.items() if k != "epoch"}, step=record["epoch"])
    if history:
        print(f"note: logged the {len(history)} epochs the checkpoint trained untracked to new run {run.info.run_id}")
    extra["mlflow_run_id"] = run.info.run_id
    return run


def backfill_epochs(history: list[dict], prefix: str = "") -> None:
    """Log to the active run the epochs of ``history`` it lacks: a stage that saved an epoch's
    checkpoint and then lost its tracking server (killed, restarted) never logged that epoch, and
    resuming from the checkpoint would otherwise leave a hole in the run's curves."""
    import mlflow

    if not history:
        return
    probe = f"{prefix}{next(k for k in history[-1] if k != 'epoch')}"
    run_id = mlflow.active_run().info.run_id
    logged = {m.step for m in mlflow.MlflowClient().get_metric_history(run_id, probe)}
    missing = [record for record in history if record["epoch"] not in logged]
    for record in missing:
        metrics = {f"{prefix}{k}": float(v) for k, v in record.items() if k != "epoch"}
        mlflow.log_metrics(metrics, step=record["epoch"])
    if missing:
        print(f"note: logged {len(missing)} epoch(s) the checkpoint holds but MLflow run {run_id} lacked")
