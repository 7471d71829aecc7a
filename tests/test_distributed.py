"""Data-parallel training: the batch sharding, and a real 2-process ``torchrun`` on CPU (gloo)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, clean_env, kill_at_first_checkpoint, train_workspace

from cvae_pipeline.batches import BatchStream
from cvae_pipeline.errors import PipelineError
from cvae_pipeline.training.distributed import Distributed, per_process_batch


def test_processes_split_each_epoch_into_disjoint_equal_shares():
    images = np.zeros((11, 3, 32, 32), np.uint8)
    labels = np.arange(11)
    seen = []
    for rank in range(2):
        stream = BatchStream(
            images, labels, 2, torch.device("cpu"), True, torch.Generator().manual_seed(5), rank=rank, world_size=2
        )
        seen.append(torch.cat([y for _, y in stream]).tolist())
        assert stream.num_images == 5 and len(stream) == 3
    assert len(seen[0]) == len(seen[1]) == 5 and not set(seen[0]) & set(seen[1])  # one image of 11 left out


def test_global_batch_must_divide_among_processes():
    assert per_process_batch(128, Distributed(0, 4)) == 32
    with pytest.raises(PipelineError, match="not divisible by the 3 torchrun processes"):
        per_process_batch(128, Distributed(0, 3))


@pytest.mark.slow
def test_torchrun_two_cpu_processes_train_one_model_tracked_once(tmp_path):
    ws = train_workspace(
        tmp_path / "ws",
        {"backbone": "mlp", "width": 16, "latent_dim": 4, "latent_resolution": 1},
        {"epochs": 2, "batch_size": 32},
        train_per_class=8,
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(REPO / "stages" / "train.py"),
        ],
        cwd=ws,
        capture_output=True,
        text=True,
        env=clean_env(OMP_NUM_THREADS="1"),
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 processes (torchrun)" in result.stdout
    assert result.stdout.count("epoch 2/2") == 1  # only rank 0 reports
    history = (ws / "reports" / "train" / "history.csv").read_text().splitlines()
    assert len(history) == 3 and (ws / "models" / "model.pt").is_file()
    info = json.loads((ws / "models" / "mlflow_run.json").read_text())

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{ws / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("cvae-cifar10")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_id == info["run_id"]
    assert run.info.status == "FINISHED" and run.data.metrics["final_epochs"] == 2
    # each epoch covers the whole training split across both processes: 80 images
    assert len(client.get_metric_history(run.info.run_id, "val_neg_elbo")) == 2


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


@pytest.mark.slow
def test_a_killed_two_process_torchrun_resumes_to_the_uninterrupted_weights(tmp_path):
    """Each process draws its own latent noise; the checkpoint holds every process's generator, and each
    resumes its own — not the first epoch's noise again (a reseed after resuming replayed it)."""
    epochs = 6
    settings = (
        {"backbone": "conv", "width": 16, "latent_dim": 16, "latent_resolution": 1},
        {"epochs": epochs, "batch_size": 32, "precision": "fp32"},
    )
    killed = train_workspace(tmp_path / "killed", *settings, train_per_class=60)
    clean = train_workspace(tmp_path / "clean", *settings, train_per_class=60)
    command, env = [*TORCHRUN, str(REPO / "stages" / "train.py")], clean_env(OMP_NUM_THREADS="1")
    epoch_at_kill = kill_at_first_checkpoint(command, killed, env)
    assert 1 <= epoch_at_kill < epochs, "the run finished before it could be killed; make it longer"

    for workspace in (killed, clean):
        done = subprocess.run(command, cwd=workspace, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        if workspace == killed:
            assert f"resuming from models/checkpoints/last.pt after epoch {epoch_at_kill}/{epochs}" in done.stdout
    a = torch.load(killed / "models" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(clean / "models" / "model.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
