"""The stages against a real ``mlflow server`` on loopback, and against one that is down."""

from __future__ import annotations

import json
import os
import time
import urllib.parse
import urllib.request

import pytest
import yaml
from conftest import BIN, TINY_PRIOR, clean_env, free_port, run_stage, running_server, train_workspace

TINY_MODEL = {"backbone": "mlp", "width": 16, "latent_dim": 4, "latent_resolution": 1}
TINY_TRAIN = {"epochs": 1, "batch_size": 64}


def rest(base: str, endpoint: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"{base}/api/2.0/mlflow/{endpoint}", data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real ``mlflow server`` (SQLite backend, proxied artifacts) on a free loopback port."""
    root = tmp_path_factory.mktemp("server")
    port = free_port()
    command = [
        str(BIN / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{root / 'server.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
    ]
    base = f"http://127.0.0.1:{port}"
    env = clean_env(PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    with running_server(command, f"{base}/health", root / "server.log", env):
        yield base


@pytest.mark.slow
def test_pipeline_tracks_into_a_real_mlflow_server(mlflow_server, tmp_path):
    ws = train_workspace(tmp_path / "ws", TINY_MODEL, TINY_TRAIN)
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["prior"].update(TINY_PRIOR)
    params["sample"].update(per_class=3, steps=5)
    params["evaluate"].update(kid_subsets=5, probe_folds=2, iw_samples=2)
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {"MLFLOW_TRACKING_URI": mlflow_server}
    for stage in ("train", "prior", "fid_reference", "sample", "evaluate"):
        result = run_stage(stage, ws, env=env)
        assert result.returncode == 0, f"{stage}:\n{result.stdout}\n{result.stderr}"
    assert not (ws / "mlflow.db").exists()  # nothing went to the local default store

    info = json.loads((ws / "models" / "mlflow_run.json").read_text())
    assert "tracking_uri" not in info  # the store is the environment's, never a recorded address
    experiment = rest(mlflow_server, "experiments/get-by-name?experiment_name=cvae-cifar10")["experiment"]
    runs = rest(mlflow_server, "runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
    (run,) = [r for r in runs if r["info"]["run_id"] == info["run_id"]]
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    assert {"fid", "kid_mean", "class_consistency", "val_neg_elbo", "final_train_seconds"} <= set(metrics)
    reported = json.loads((ws / "reports" / "metrics.json").read_text())
    assert metrics["fid"] == pytest.approx(reported["fid"])
    versions = rest(mlflow_server, "model-versions/search?filter=" + urllib.parse.quote("name='cvae-cifar10'"))[
        "model_versions"
    ]
    assert versions and versions[0]["run_id"] == info["run_id"]
    assert {t["key"] for t in versions[0]["tags"]} >= {"fid", "kid_mean", "fid_protocol"}


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
    sampled = run_stage("sample", ws, env={"MLFLOW_TRACKING_URI": uri})
    assert sampled.returncode == 0, sampled.stderr
    assert "not tracked in MLflow" in sampled.stdout
