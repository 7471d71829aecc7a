"""End to end as a user drives it: ``dvc repro`` and ``dvc exp run`` in a fresh git repo,
on a tiny configuration (a few hundred images, one epoch) with the real Inception network."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
import numpy as np
from archives import CLASSES, make_image_folder_archive, sha256
from conftest import REPO, clean_env, write_params

BIN = Path(sys.executable).parent
ALL_STAGES = ("download", "prepare", "fid_reference", "train", "sample", "evaluate")


def sh(*cmd: str, cwd: Path) -> str:
    env = clean_env(PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


@pytest.fixture
def dvc_repo(tmp_path: Path) -> Path:
    """A copy of the project's pipeline in a new git + DVC repo, fed a tiny archive."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(REPO / name, repo / name)
    shutil.copytree(REPO / "stages", repo / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    archive = make_image_folder_archive(tmp_path / "cifar.tar.gz", 12, 4)
    params = write_params(repo, [{"uri": str(archive), "sha256": sha256(archive)}], val_fraction=0.25)
    # the real pipeline, shrunk: a small model, one epoch
    text = yaml.safe_load(params.read_text())
    text["model"].update(backbone="mlp", width=32, latent_dim=8)
    text["train"].update(epochs=1, batch_size=32)
    text["sample"].update(per_class=5)
    text["evaluate"].update(kid_subsets=10, probe_folds=2, iw_samples=2)
    params.write_text(yaml.safe_dump(text, sort_keys=False))
    sh("git", "init", "-q", cwd=repo)
    sh("git", "config", "user.email", "test@example.com", cwd=repo)
    sh("git", "config", "user.name", "test", cwd=repo)
    sh("dvc", "init", "-q", cwd=repo)
    sh("dvc", "config", "core.analytics", "false", cwd=repo)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "pipeline", cwd=repo)
    return repo


def facts(repo: Path) -> dict:
    return json.loads((repo / "reports" / "data.json").read_text())


def mlflow_client(repo: Path):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")


def mlflow_runs(repo: Path) -> list:
    client = mlflow_client(repo)
    experiment = client.get_experiment_by_name("cvae-cifar10")
    return client.search_runs([experiment.experiment_id]) if experiment else []


def test_repro_then_no_op_then_experiments_rerun_only_what_changed(dvc_repo: Path):
    out = sh("dvc", "repro", cwd=dvc_repo)
    for stage in ALL_STAGES:
        assert f"Running stage '{stage}'" in out
    assert facts(dvc_repo)["train"]["per_class"]["cat"] == 9  # 12 minus the 25% validation split
    assert json.loads((dvc_repo / "reports" / "train" / "metrics.json").read_text())["epochs"] == 1
    metrics = json.loads((dvc_repo / "reports" / "metrics.json").read_text())
    for key in ("fid", "kid_mean", "kid_std", "class_consistency", "precision", "recall", "test_neg_elbo_nats"):
        assert np.isfinite(metrics[key]), key
    assert metrics["num_samples"] == 50 and set(metrics["per_class"]) == set(CLASSES)
    (run,) = mlflow_runs(dvc_repo)
    assert run.data.params["model.backbone"] == "mlp" and "fid" in run.data.metrics
    assert run.data.metrics["fid"] == pytest.approx(metrics["fid"])
    artifacts = {a.path for a in mlflow_client(dvc_repo).list_artifacts(run.info.run_id, "samples")}
    assert "samples/final_grid.png" in artifacts and "samples/epoch_0001.png" in artifacts
    assert (dvc_repo / "reports" / "samples" / "grid.png").is_file()

    assert "Data and pipelines are up to date" in sh("dvc", "repro", cwd=dvc_repo)
    metrics = json.loads(sh("dvc", "metrics", "show", "--json", cwd=dvc_repo))
    workspace = next(iter(metrics.values()))["data"]  # keyed "" (workspace) in DVC 3.x
    assert workspace["reports/data.json"]["data"]["train"]["images"] == 90
    assert "val_loss" in workspace["reports/train/metrics.json"]["data"]

    sh("git", "add", "-A", cwd=dvc_repo)
    sh("git", "commit", "-qm", "baseline", cwd=dvc_repo)
    out = sh("dvc", "exp", "run", "-S", "train.epochs=2", cwd=dvc_repo)
    for stage in ("train", "sample", "evaluate"):
        assert f"Running stage '{stage}'" in out
    for stage in ("download", "prepare", "fid_reference"):
        assert f"Running stage '{stage}'" not in out
    runs = mlflow_runs(dvc_repo)
    assert len(runs) == 2 and {r.data.params["train.epochs"] for r in runs} == {"1", "2"}
    named = [r for r in runs if r.data.params["train.epochs"] == "2"][0]
    assert named.data.tags.get("dvc_experiment") == named.info.run_name  # run named after the DVC experiment

    out = sh("dvc", "exp", "run", "-S", "prepare.train_subset=20", cwd=dvc_repo)
    assert "Running stage 'prepare'" in out and "Running stage 'download'" not in out
    assert "Running stage 'fid_reference'" not in out  # the test split did not change
    assert set(facts(dvc_repo)["train"]["per_class"].values()) == {2}
    experiments = [
        e for e in walk_exp_show(json.loads(sh("dvc", "exp", "show", "--json", cwd=dvc_repo)))
        if e["params"]["params.yaml"]["data"]["prepare"]["train_subset"] == 20
    ]
    assert experiments and experiments[0]["metrics"]["reports/data.json"]["data"]["train"]["images"] == 20


def walk_exp_show(rows: list) -> list[dict]:
    """Every revision's ``data`` in ``dvc exp show --json`` (baselines and their experiments)."""
    found = []
    for row in rows:
        if row.get("data"):
            found.append(row["data"])
        for exp in row.get("experiments") or []:
            found.extend(walk_exp_show(exp.get("revs", [])))
    return found
