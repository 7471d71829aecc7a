"""Runs left RUNNING by a killed stage are closed by the next stage on the same machine, and no other."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import mlflow

from cvae_pipeline.tracking.orphans import OWNER_TAG, close_orphans, owner, owner_alive


def test_only_the_runs_of_dead_processes_on_this_machine_are_marked_killed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    owners = {
        "dead here": owner(dead.pid).replace("/?", "/1"),  # its /proc entry is gone: use any start time
        "alive here": owner(),
        "recycled pid": f"{socket.gethostname()}/{os.getpid()}/1",  # this pid, but another start time
        "another machine": "elsewhere/1/1",
    }
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    experiment = client.create_experiment("orphans", artifact_location=(tmp_path / "artifacts").as_uri())
    runs = {name: client.create_run(experiment, tags={OWNER_TAG: tag}).info.run_id for name, tag in owners.items()}
    assert owner_alive(owners["alive here"]) is True and owner_alive(owners["another machine"]) is None

    closed = close_orphans()

    assert sorted(closed) == sorted([runs["dead here"], runs["recycled pid"]])
    status = {name: client.get_run(run_id).info.status for name, run_id in runs.items()}
    assert status == {
        "dead here": "KILLED",
        "recycled pid": "KILLED",
        "alive here": "RUNNING",
        "another machine": "RUNNING",
    }
    assert close_orphans() == []  # nothing left to close
