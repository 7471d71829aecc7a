"""Which MLflow run a stage's results go to: the recorded run, or a new one nested under it when the
recorded run already holds results of other settings (so a re-sampling does not overwrite an evaluation)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from cvae_pipeline import tracking


@pytest.fixture
def trained_run(tmp_path: Path, monkeypatch) -> tuple[mlflow.MlflowClient, str, Path]:
    """(client, run id, run file) of a finished "training" run in a fresh SQLite store, already sampled
    at temperature 1.0."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("e", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment, run_name="trained") as run:
        mlflow.log_params({"train.lr": "0.001", "sample.temperature": "1.0", "sample.seed": "0"})
        mlflow.log_metrics({"final_train_seconds": 12.0, "final_val_neg_elbo": -5.0, "fid": 100.0})
        mlflow.set_tags({"sample.temperature": "1.0", "sample.seed": "0", "samples.images": "decoder mean"})
    run_file = tmp_path / "mlflow_run.json"
    tracking.write_run_file(run.info.run_id, experiment, path=run_file)
    return mlflow.MlflowClient(uri), run.info.run_id, run_file


def test_same_settings_log_into_the_recorded_run(trained_run):
    client, run_id, run_file = trained_run
    with tracking.results_run("sample", {"sample.temperature": "1.0", "sample.seed": "0"}, run_file=run_file) as run:
        assert run.info.run_id == run_id
    assert len(client.search_runs([client.get_run(run_id).info.experiment_id])) == 1


def test_settings_the_run_has_not_seen_yet_log_into_it(trained_run):
    """A fresh training run has no ``evaluate.*`` tags: its first evaluation belongs in it."""
    client, run_id, run_file = trained_run
    with tracking.results_run("evaluate", {"evaluate.kid_subsets": "100"}, run_file=run_file) as run:
        assert run.info.run_id == run_id


def test_other_settings_get_a_nested_run_and_leave_the_first_results_alone(trained_run, monkeypatch):
    client, run_id, run_file = trained_run
    monkeypatch.setenv("DVC_EXP_NAME", "cooler")
    with tracking.results_run("sample", {"sample.temperature": "0.5", "sample.seed": "0"}, run_file=run_file) as run:
        mlflow.log_metric("fid", 90.0)
        child_id = run.info.run_id
    assert child_id != run_id
    child, parent = client.get_run(child_id), client.get_run(run_id)
    assert child.info.run_name == "cooler" and child.info.status == "FINISHED"
    assert child.data.tags["mlflow.parentRunId"] == run_id and child.data.tags["trained_in_run"] == run_id
    assert child.data.params == {"train.lr": "0.001", "sample.temperature": "0.5", "sample.seed": "0"}
    assert child.data.metrics == {"final_train_seconds": 12.0, "final_val_neg_elbo": -5.0, "fid": 90.0}
    assert child.data.tags["samples.images"] == "decoder mean" and child.data.tags["stage"] == "sample"
    # the first sampling's run is untouched
    assert parent.data.metrics["fid"] == 100.0 and parent.data.tags["sample.temperature"] == "1.0"


def test_a_nested_run_without_an_experiment_name_says_what_changed(trained_run):
    client, run_id, run_file = trained_run
    with tracking.results_run("sample", {"sample.temperature": "0.5", "sample.seed": "0"}, run_file=run_file) as run:
        child_id = run.info.run_id
    assert client.get_run(child_id).info.run_name == "trained sample.temperature=0.5"


def test_untracked_training_gives_no_run(tmp_path):
    run_file = tmp_path / "mlflow_run.json"
    tracking.write_run_file(None, None, path=run_file)
    with tracking.results_run("sample", {"sample.temperature": "0.5"}, run_file=run_file) as run:
        assert run is None
