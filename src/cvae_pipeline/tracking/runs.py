"""Which MLflow run a stage logs into: always its own, decided without reading shared state.

``train`` starts a top-level run named after the DVC experiment (or re-opens its checkpoint's, when it
resumes an interrupted run of the same inputs). Every ``prior``, ``sample`` and ``evaluate`` that runs
starts a new run of its own, nested under the run that trained its model (the id in
``models/mlflow_run.json``), named ``<experiment> · <stage>`` and carrying every param of
``params.yaml``. No stage ever re-opens or writes another execution's run, and none decides by reading
tags another process may be writing: two queued experiments at ``-j 2`` cannot land in one run.

A training run this store does not know (a clone that pulled the model from a DVC remote, but not the
git-ignored ``mlflow.db``) or one in another MLflow experiment is no parent: the stage's run is then
top-level and names the training run in its ``trained_in_run`` tag. No store and ``mlflow.required:
false``: no run at all.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from ..errors import TrackingError, store_failure
from ..paths import TRAIN_RUN_FILE
from .handoff import read_run_file
from .orphans import claim
from .store import configure, tracking_uri
from .tags import flatten_params, run_tags


def _experiment_or_none(params) -> str | None:
    """The id of ``params.mlflow.experiment`` in the store; None (with a warning) when the store is out of
    reach and ``mlflow.required`` is false: the stage then runs untracked instead of failing."""
    try:
        return configure(params.mlflow.experiment)
    except TrackingError as exc:
        if params.mlflow.required:
            raise
        print(f"warning: {exc}; going on without MLflow tracking (mlflow.required is false)", flush=True)
        return None


def _experiment_name() -> str | None:
    return os.environ.get("DVC_EXP_NAME")


def _training_run(client, run_id: str | None):
    """The training run ``run_id`` names, or None when this store does not know it."""
    import mlflow

    if run_id is None:
        return None
    try:
        return client.get_run(run_id)
    except mlflow.exceptions.MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise store_failure(tracking_uri(), exc) from None


@contextlib.contextmanager
def stage_run(stage: str, params, run_file: Path = TRAIN_RUN_FILE, training_figures: bool = False):
    """A new run for this execution of ``stage``, nested under the training's run; None when untracked.

    ``params``: the validated ``PipelineParams``; all of them become the run's params, so each run says
    what its figures were made with, and the MLflow UI compares any two of them side by side.
    ``training_figures``: copy the training run's ``final_*`` metrics and what it recorded beside the
    params (``train.precision_used``) in too — the evaluation's run, so one row of ``cvae report`` holds
    the scores and what the training cost."""
    import mlflow

    trained_in = read_run_file(run_file).get("run_id")
    if trained_in is None:
        print("note: the training was not tracked in MLflow; nothing to log to", flush=True)
        yield None
        return
    experiment_id = _experiment_or_none(params)
    if experiment_id is None:
        yield None
        return
    parent = _training_run(mlflow.MlflowClient(), trained_in)
    tags = run_tags(stage) | {"trained_in_run": trained_in}
    if parent is not None and parent.info.experiment_id == experiment_id:
        tags["mlflow.parentRunId"] = trained_in
    name = f"{_experiment_name() or (parent.info.run_name if parent else trained_in[:8])} · {stage}"
    flat = flatten_params(params.model_dump())
    with mlflow.start_run(experiment_id=experiment_id, run_name=name, tags=tags) as run:
        mlflow.log_params(flat)
        if parent is not None and training_figures:
            mlflow.log_params({k: v for k, v in parent.data.params.items() if k not in flat})
            mlflow.log_metrics({k: v for k, v in parent.data.metrics.items() if k.startswith("final_")})
        if parent is None:
            print(
                f"note: training run {trained_in} is not in this store's experiment "
                f"'{params.mlflow.experiment}'; logging to top-level run {run.info.run_id}",
                flush=True,
            )
        yield run


def start_training_run(extra: dict, history: list[dict], params, params_file: Path):
    """The MLflow run of a training: the checkpoint's (``extra["mlflow_run_id"]``) when this resumes an
    interrupted run, or a new one named after the DVC experiment, with the params and ``params.yaml``
    attached. A new run for a checkpoint that already has epochs (they trained untracked, or their run is
    gone) gets the per-epoch metrics of those epochs. None when tracking is off (``mlflow.required:
    false`` and the store unreachable)."""
    import mlflow

    experiment_id = _experiment_or_none(params)
    if experiment_id is None:
        return None
    client = mlflow.MlflowClient()
    run_id = extra.get("mlflow_run_id")
    if run_id and _training_run(client, run_id) is None:
        print(f"note: MLflow run {run_id} of the checkpoint is gone; starting a new run")
        run_id = None
    if run_id:  # the interrupted run goes on; a write that fails now is a failure, not a missing run
        run = mlflow.start_run(run_id=run_id)
        try:
            claim(run_id)
            backfill_epochs(history)
        except mlflow.exceptions.MlflowException as exc:
            mlflow.end_run("FAILED")
            raise store_failure(tracking_uri(), exc) from None
        return run
    run = mlflow.start_run(experiment_id=experiment_id, run_name=_experiment_name(), tags=run_tags("train"))
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
