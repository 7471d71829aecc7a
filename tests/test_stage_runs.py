"""Which MLflow run each stage logs into: always a new one of its own, nested under the training's, decided
without reading anything another process may be writing; and the training's run when it resumes."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import yaml
from conftest import REPO

from cvae_pipeline import tracking
from cvae_pipeline.config import PipelineParams
from cvae_pipeline.tracking import TrackingError
from cvae_pipeline.tracking.runs import start_training_run


def pipeline_params(**changes) -> PipelineParams:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for dotted, value in changes.items():
        section, key = dotted.split(".")
        raw[section][key] = value
    return PipelineParams.model_validate(raw)


@pytest.fixture
def store(tmp_path: Path, monkeypatch) -> mlflow.MlflowClient:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    mlflow.set_tracking_uri(uri)
    return mlflow.MlflowClient(uri)


@pytest.fixture
def trained(store, tmp_path: Path) -> tuple[str, Path]:
    """(run id, run file) of a finished training run in the default experiment."""
    experiment = mlflow.create_experiment("cvae-cifar10", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment, run_name="trained") as run:
        mlflow.log_params({"train.lr": "0.001", "train.precision_used": "fp32"})
        mlflow.log_metrics({"final_train_seconds": 12.0, "val_neg_elbo": -5.0})
    run_file = tmp_path / "mlflow_run.json"
    tracking.write_run_file(run.info.run_id, experiment, path=run_file)
    return run.info.run_id, run_file


def test_every_stage_gets_a_new_run_nested_under_the_training(store, trained, monkeypatch):
    run_id, run_file = trained
    monkeypatch.setenv("DVC_EXP_NAME", "guided")
    ids = []
    for stage in ("prior", "sample", "evaluate", "sample"):  # a re-sampling too: never the same run twice
        with tracking.stage_run(stage, pipeline_params(**{"sample.guidance": 2.0}), run_file) as run:
            ids.append(run.info.run_id)
    assert len(set(ids)) == 4 and run_id not in ids
    for child_id, stage in zip(ids, ("prior", "sample", "evaluate", "sample"), strict=True):
        child = store.get_run(child_id)
        assert child.info.run_name == f"guided · {stage}" and child.info.status == "FINISHED"
        assert child.data.tags["mlflow.parentRunId"] == run_id == child.data.tags["trained_in_run"]
        assert child.data.tags["stage"] == stage and child.data.params["sample.guidance"] == "2.0"
        assert "final_train_seconds" not in child.data.metrics  # only the evaluation's run carries them
    training = store.get_run(run_id)
    assert training.data.params == {"train.lr": "0.001", "train.precision_used": "fp32"}  # untouched


def test_the_evaluations_run_carries_the_trainings_figures(store, trained):
    _, run_file = trained
    with tracking.stage_run("evaluate", pipeline_params(), run_file, training_figures=True) as run:
        pass
    logged = store.get_run(run.info.run_id).data
    assert logged.metrics == {"final_train_seconds": 12.0} and logged.params["train.precision_used"] == "fp32"


def test_a_new_experiment_name_puts_the_stages_runs_in_it(store, trained):
    """``-S mlflow.experiment=other``: the training run (in the old experiment) is no parent there."""
    run_id, run_file = trained
    with tracking.stage_run("sample", pipeline_params(**{"mlflow.experiment": "other"}), run_file) as run:
        pass
    child = store.get_run(run.info.run_id)
    assert child.info.experiment_id == store.get_experiment_by_name("other").experiment_id
    assert "mlflow.parentRunId" not in child.data.tags and child.data.tags["trained_in_run"] == run_id


def test_a_training_run_this_store_lacks_gives_a_top_level_run_naming_it(store, tmp_path):
    run_file = tmp_path / "mlflow_run.json"
    tracking.write_run_file("0123456789abcdef0123456789abcdef", "7", path=run_file)
    with tracking.stage_run("evaluate", pipeline_params(), run_file) as run:
        pass
    child = store.get_run(run.info.run_id)
    assert child.data.tags["trained_in_run"] == "0123456789abcdef0123456789abcdef"
    assert "mlflow.parentRunId" not in child.data.tags and child.info.run_name == "01234567 · evaluate"


def test_untracked_training_gives_no_run(tmp_path):
    run_file = tmp_path / "mlflow_run.json"
    tracking.write_run_file(None, None, path=run_file)
    with tracking.stage_run("sample", pipeline_params(), run_file) as run:
        assert run is None


def test_a_resumed_run_whose_next_write_is_refused_ends_in_one_line(store, trained, tmp_path, monkeypatch):
    """The checkpoint's run re-opens, then its first write is refused (a read-only user's 403): that is a
    failure of the store to say in one line — not a "gone" run to start again while it is still active
    (MLflow's "already active" traceback), and the re-opened run is left FAILED, not RUNNING."""
    run_id, _ = trained

    def refused(self, *args, **kwargs):  # what MLflow's REST client raises for the server's 403 answer
        raise mlflow.exceptions.RestException({"error_code": "PERMISSION_DENIED", "message": "Permission denied"})

    monkeypatch.setattr(mlflow.MlflowClient, "set_tag", refused)
    with pytest.raises(TrackingError, match=r"may not write there \(403 Permission denied\)") as failure:
        start_training_run({"mlflow_run_id": run_id}, [], pipeline_params(), tmp_path / "params.yaml")
    assert len(str(failure.value).splitlines()) == 1
    assert mlflow.active_run() is None and store.get_run(run_id).info.status == "FAILED"
