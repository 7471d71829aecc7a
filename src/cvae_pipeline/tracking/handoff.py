"""The run file each stage leaves: which MLflow run it logged to.

``train`` writes ``models/mlflow_run.json`` (the later stages nest their runs under it), ``prior``
``models/prior_run.json``, ``sample`` ``reports/sample_run.json`` (its run and the logged generator)
and ``evaluate`` ``reports/evaluate_run.json`` (its run and the registered version). All are kept in
git, so an applied experiment's commit names its runs. None is any stage's dep: a run id is a
hand-off, not an input, and a new one must not make DVC re-run what follows.

Each stage writes its run file last, after its run has ended, and ``dvc.yaml`` declares it with
``cache: false``: DVC then has no cached copy to restore the stage from, so a stage killed while its
run was open is *run* again by the next ``dvc repro`` (which closes the run the kill left RUNNING,
see :mod:`.orphans`) instead of having its outputs checked out from the cache with the run left
RUNNING for ever.

A run file holds ids only, never the tracking URI: a tracked file must not carry a machine's path, and
the store is whatever this machine's ``MLFLOW_TRACKING_URI`` (or its local SQLite file) says. A run id
this store does not know — a clone that pulled the model from a DVC remote, but not the git-ignored
``mlflow.db`` — is handled by :func:`.runs.stage_run`.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import PipelineError
from ..io import write_json_atomic
from ..paths import TRAIN_RUN_FILE, producer


def write_run_file(
    run_id: str | None, experiment_id: str | None, model_uri: str | None = None, path: Path = TRAIN_RUN_FILE
) -> None:
    """``run_id`` None: the stage ran untracked (``mlflow.required: false`` and no store)."""
    write_json_atomic(path, {"run_id": run_id, "experiment_id": experiment_id, "model_uri": model_uri})


def read_run_file(path: Path = TRAIN_RUN_FILE) -> dict:
    path = Path(path)
    stage = producer(path) or "train"  # the stage that writes it
    if not path.is_file():
        raise PipelineError(f"{path}: missing; run `dvc repro {stage}` first")
    try:
        info = json.loads(path.read_text())
    except ValueError as exc:
        raise PipelineError(f"{path}: not valid JSON ({exc}); re-create it with `dvc repro -f {stage}`") from None
    if not isinstance(info, dict) or "run_id" not in info:
        raise PipelineError(f"{path}: names no MLflow run; re-create it with `dvc repro -f {stage}`")
    return info
