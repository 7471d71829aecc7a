"""The stages against a tracking server that is down (the team stack's server, up, is test_team_stack.py)."""

from __future__ import annotations

import json
import time

import yaml
from conftest import TINY_MODEL, TINY_TRAIN, free_port, run_stage, tally, train_workspace


def test_stage_fails_within_seconds_naming_an_unreachable_server(tmp_path):
    ws = train_workspace(tmp_path / "ws", TINY_MODEL, TINY_TRAIN)
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    start = time.monotonic()
    result = run_stage("train", ws, env={"MLFLOW_TRACKING_URI": uri})
    elapsed = time.monotonic() - start
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: MLflow tracking store {uri} is not reachable")
    assert elapsed < 60, f"took {elapsed:.0f}s: retries are not off"
    assert not (ws / "models" / "model.pt").exists()
    tally("tracking faults", "server unreachable: one line", seconds=elapsed)


def test_unrequired_tracking_only_warns_and_the_stages_run_untracked(tmp_path):
    ws = train_workspace(tmp_path / "ws", TINY_MODEL, TINY_TRAIN)
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["mlflow"]["required"] = False
    params["prior"]["kind"] = "none"
    params["sample"].update(per_class=2, latents="model")
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    uri = f"http://127.0.0.1:{free_port()}"
    trained = run_stage("train", ws, env={"MLFLOW_TRACKING_URI": uri})
    assert trained.returncode == 0, trained.stderr
    assert f"warning: MLflow tracking store {uri} is not reachable" in trained.stdout
    assert "going on without MLflow tracking" in trained.stdout
    assert json.loads((ws / "models" / "mlflow_run.json").read_text())["run_id"] is None
    assert (ws / "models" / "model.pt").is_file() and (ws / "reports" / "train" / "history.csv").is_file()
    fitted = run_stage("prior", ws, env={"MLFLOW_TRACKING_URI": uri})
    assert fitted.returncode == 0, fitted.stderr
    assert json.loads((ws / "models" / "prior_run.json").read_text())["run_id"] is None
    refined = run_stage("refine", ws, env={"MLFLOW_TRACKING_URI": uri})
    assert refined.returncode == 0, refined.stderr
    assert json.loads((ws / "models" / "refine_run.json").read_text())["run_id"] is None
    sampled = run_stage("sample", ws, env={"MLFLOW_TRACKING_URI": uri})
    assert sampled.returncode == 0, sampled.stderr
    assert "not tracked in MLflow" in sampled.stdout
