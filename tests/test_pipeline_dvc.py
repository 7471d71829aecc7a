"""End to end as a user drives it: ``dvc repro`` and ``dvc exp run`` in a fresh git repo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from archives import make_image_folder_archive, sha256
from conftest import REPO, write_params

BIN = Path(sys.executable).parent


def sh(*cmd: str, cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
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
    write_params(repo, [{"uri": str(archive), "sha256": sha256(archive)}], val_fraction=0.25)
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


def test_repro_is_complete_then_a_no_op_and_exp_run_changes_only_prepare(dvc_repo: Path):
    out = sh("dvc", "repro", cwd=dvc_repo)
    assert "Running stage 'download'" in out and "Running stage 'prepare'" in out
    assert facts(dvc_repo)["train"]["per_class"]["cat"] == 9  # 12 minus the 25% validation split

    assert "Data and pipelines are up to date" in sh("dvc", "repro", cwd=dvc_repo)
    metrics = sh("dvc", "metrics", "show", "--json", cwd=dvc_repo)
    assert '"images": 90' in metrics.replace(" ", "") or '"images":90' in metrics.replace(" ", "")

    sh("git", "add", "-A", cwd=dvc_repo)
    sh("git", "commit", "-qm", "baseline", cwd=dvc_repo)
    out = sh("dvc", "exp", "run", "-S", "prepare.train_subset=20", cwd=dvc_repo)
    assert "Running stage 'prepare'" in out and "Running stage 'download'" not in out
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
