"""``benchmarks/speed.py``'s whole-experiment rows: two real ``dvc exp run``s, before (fp32) and after.

The rows time what a user's ``dvc exp run -S train.seed=1`` costs, so they must run every training stage
even when DVC's run cache already holds a result of the same settings (a cache hit would time a copy), and
the "before" experiment must really be the fp32 one. Checked on the tiny pipeline.
"""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import load_benchmark, make_pipeline_repo


@pytest.fixture(scope="module")
def speed():
    return load_benchmark("speed")


def _experiment_params(repo: Path, name: str) -> dict:
    refs = subprocess.run(
        ["git", "for-each-ref", "--format=%(refname)", "refs/exps"], cwd=repo, capture_output=True, text=True
    ).stdout.split()
    (ref,) = [r for r in refs if r.endswith(f"/{name}")]
    shown = subprocess.run(["git", "show", f"{ref}:params.yaml"], cwd=repo, capture_output=True, text=True)
    return yaml.safe_load(shown.stdout)


@pytest.mark.slow
def test_whole_experiment_rows_train_for_real_before_and_after(speed, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    repo = make_pipeline_repo(tmp_path)
    log = tmp_path / "experiment.log"
    calls = [speed.experiment_rows(repo, 1, log) for _ in range(2)]
    for rows in calls:
        assert "error" not in rows, rows
        for label in ("before", "after"):
            row = rows[label]
            assert "error" not in row, f"{row}\n{log.read_text()[-3000:]}"
            assert row["seconds"] > 0 and row["train_images_per_second"] > 0 and row["prior_seconds"] is not None
            assert math.isfinite(row["fid"]) and row["fid"] > 0
            assert row["num_samples"] > 0
        before = _experiment_params(repo, rows["before"]["experiment"])
        after = _experiment_params(repo, rows["after"]["experiment"])
        assert before["train"]["seed"] == after["train"]["seed"] == 1
        for stage in ("train", "prior", "sample"):
            assert before[stage]["precision"] == "fp32"
            assert after[stage]["precision"] == "auto"
    text = log.read_text()
    # the second call's settings are in DVC's run cache, yet every training stage ran again
    for stage in ("train", "prior", "sample", "evaluate"):
        assert text.count(f"Running stage '{stage}'") == 4, stage
    assert "Running stage 'fid_reference'" in text  # the untimed set-up, once
    assert text.count("Running stage 'fid_reference'") == 1
    # the user's workspace is left as it was: the experiments ran in copies
    assert yaml.safe_load((repo / "params.yaml").read_text())["train"]["precision"] == "auto"
