"""DVC decides what re-runs, and a stage that runs computes: a code change that makes ``dvc repro`` re-run
``train`` or ``prior`` trains anew, never "resumes" a finished checkpoint into the old output; a new
``mlflow.experiment`` gets runs of its own. On the tiny pipeline in a fresh git + DVC repository, editing
its copy of the sources as a user edits theirs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import make_pipeline_repo, sh

pytestmark = pytest.mark.slow

EPOCHS = 2


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = make_pipeline_repo(tmp_path_factory.mktemp("rerun"), "fp32", train={"epochs": EPOCHS})
    out = sh("dvc", "repro", "prior", cwd=repo)
    assert "Running stage 'train'" in out and "Running stage 'prior'" in out
    return repo


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{path}: no '{old}' to edit; update this test"
    path.write_text(text.replace(old, new))


def runs_of(repo: Path, experiment: str) -> list:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


def test_a_new_mlflow_experiment_gets_the_runs(repo: Path):
    """``-S mlflow.experiment=other`` re-runs train (a param of it) and prior: both log into ``other``, the
    prior's run nested under the training's there."""
    sh("dvc", "exp", "run", "-S", "mlflow.experiment=other", "prior", cwd=repo)
    runs = {run.data.tags["stage"]: run for run in runs_of(repo, "other")}
    assert set(runs) == {"train", "prior"}
    assert runs["prior"].data.tags["mlflow.parentRunId"] == runs["train"].info.run_id
    trained_in = json.loads((repo / "models" / "mlflow_run.json").read_text())["run_id"]
    assert trained_in == runs["train"].info.run_id


def test_editing_the_pixel_scaling_trains_again_from_scratch(repo: Path):
    """The case that motivated it: ``batches.py``'s /255 made /256. DVC re-runs ``train`` (a dep changed); the stage
    must train every epoch anew and write the new model — not resume the finished checkpoint."""
    model = repo / "models" / "model.pt"
    before = model.read_bytes()
    edit(repo / "src" / "cvae_pipeline" / "batches.py", "div_(255.0)", "div_(256.0)")
    out = sh("dvc", "repro", "train", cwd=repo)
    assert "Running stage 'train'" in out and "resuming" not in out
    assert all(f"epoch {epoch}/{EPOCHS}" in out for epoch in range(1, EPOCHS + 1))
    assert model.read_bytes() != before
    assert not (repo / "models" / "checkpoints" / "last.pt").exists()  # finished: nothing left to resume


def test_editing_the_schedule_fits_the_prior_again_from_scratch(repo: Path):
    """``prior`` computes with ``training/schedules.py`` too: an edit there re-fits the prior from scratch
    (``dvc repro -s prior``: this stage alone, on the model at hand)."""
    prior = repo / "models" / "prior.pt"
    out = sh("dvc", "repro", "prior", cwd=repo)  # the prior of the model the previous test trained
    before = prior.read_bytes()
    edit(
        repo / "src" / "cvae_pipeline" / "training" / "schedules.py",
        "return 0.5 * (1.0 + math.cos(",
        "return 0.25 * (1.0 + math.cos(",
    )
    out = sh("dvc", "repro", "-s", "prior", cwd=repo)
    assert "Running stage 'prior'" in out and "resuming" not in out
    assert prior.read_bytes() != before
    assert not (repo / "models" / "checkpoints" / "prior_last.pt").exists()
