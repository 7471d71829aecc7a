"""``kill -9`` of ``dvc repro`` while each stage runs, at seeded random moments; then ``dvc repro`` again.

After every kill: no output that DVC would take for valid is half-written (each is missing, or
complete: the previous version or, when the kill fell after its atomic write, the new one); no MLflow
run is left RUNNING (the next stage marks a dead process's run KILLED, or training resumes its
checkpoint's run); and the re-run ends with outputs equal to those of an uninterrupted run —
bit-exact for every stage (the pipeline is deterministic on a CPU for its seeds), except what measures
the re-run's clock (``*_seconds``, ``*_per_second`` in reports) or names its new MLflow run (the run
files, the generator's model URI).

``CVAE_KILLS_PER_STAGE`` (default 1) kill points per stage; ``CVAE_KILL_SEED`` (default 0) the seed.
``benchmarks/robustness.py`` runs more."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
from conftest import BIN, ROBUSTNESS_FIGURES, clean_env, make_pipeline_repo, sh, tally

pytestmark = pytest.mark.slow

STAGES = ("download", "prepare", "fid_reference", "train", "prior", "refine", "sample", "evaluate")
KILLS_PER_STAGE = int(os.environ.get("CVAE_KILLS_PER_STAGE", 1))
SEED = int(os.environ.get("CVAE_KILL_SEED", 0))
#: three epochs, so that a kill can fall after a checkpoint (resumed) or before the first (restarted)
TRAIN = {"epochs": 3}


#: files that name the MLflow run or logged model they were written with: a re-run that opens a new run
#: (a kill before train's first checkpoint) rightly writes new ids; everything else must be bit-exact
RUN_IDENTITY = {
    "models/mlflow_run.json",
    "models/prior_run.json",
    "models/refine_run.json",
    "reports/sample_run.json",
    "reports/evaluate_run.json",
    "data/samples/generator.json",
    # resume files (no DVC outputs): they hold the run id beside the weights
    "models/checkpoints/last.pt",
    "models/checkpoints/prior_last.pt",
    "models/checkpoints/refine_last.pt",
}


#: report fields that measure time (seconds, throughput): a re-run's clock, not its results
TIMING = re.compile(r"seconds|per_second")


def comparable(path: Path) -> bytes:
    """A file's content as compared: metrics and history files without their timing fields."""
    if path.suffix == ".json" and path.parent.name != "samples":
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            return json.dumps({k: v for k, v in data.items() if not TIMING.search(k)}, sort_keys=True).encode()
    if path.suffix == ".csv":
        table = pd.read_csv(path)
        return table[[c for c in table.columns if not TIMING.search(c)]].to_csv(index=False).encode()
    return path.read_bytes()


def snapshot(repo: Path) -> dict[str, str]:
    """sha256 of every output file as compared, temporary siblings included (litter shows as a difference)."""
    return {
        str(f.relative_to(repo)): hashlib.sha256(comparable(f)).hexdigest()
        for root in ("data", "models", "reports")
        for f in sorted((repo / root).rglob("*"))
        if f.is_file() and str(f.relative_to(repo)) not in RUN_IDENTITY
    }


def changed_outputs(repo: Path, stage: str) -> dict[str, str]:
    """{output: how it changed} per ``dvc status``: 'deleted' is a clean state after a kill,
    'modified' would be a half-written output."""
    env = clean_env(PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    result = subprocess.run(["dvc", "status", stage, "--json"], cwd=repo, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout.strip() or "{}")
    changes = {}
    for entry in status.get(stage, []):
        if isinstance(entry, dict):
            changes.update(entry.get("changed outs", {}))
    return changes


def dvc_rwlock_broken(repo: Path) -> bool:
    """Whether DVC can no longer read its stage lock ``.dvc/tmp/rwlock``: DVC rewrites it in place (its
    ``rwlock._edit_rwlock`` opens the file with ``w``, then dumps) when a stage starts and ends, so a kill
    inside that write leaves it empty, and every ``dvc`` command then refuses to run."""
    env = clean_env(PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    result = subprocess.run(["dvc", "status"], cwd=repo, env=env, capture_output=True, text=True)
    return result.returncode != 0 and "RWLock-file" in result.stderr


def dvc_lock_broken(repo: Path) -> bool:
    """Whether DVC can no longer read ``dvc.lock``. DVC rewrites it in place after each stage (its
    ``_dump_data`` opens the file with ``w+``, then dumps), so a kill inside that write truncates it."""
    env = clean_env(PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    result = subprocess.run(["dvc", "status"], cwd=repo, env=env, capture_output=True, text=True)
    return result.returncode != 0 and "dvc.lock" in result.stderr


def mlflow_runs(repo: Path) -> list:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments) if experiments else []


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """An uninterrupted ``dvc repro``, stage by stage: the outputs to match and each stage's duration."""
    repo = make_pipeline_repo(tmp_path_factory.mktemp("kills"), "fp32", train=TRAIN)  # compared bit for bit
    durations = {}
    env = clean_env(PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    for stage in STAGES:  # how long each stage's own process lives (DVC's overhead excluded)
        dvc = subprocess.Popen(["dvc", "repro", "-s", stage], cwd=repo, env=env, stdout=subprocess.DEVNULL)
        process = stage_process(psutil.Process(dvc.pid), stage)
        started = process.create_time()
        with contextlib.suppress(psutil.NoSuchProcess):
            process.wait(timeout=600)
        durations[stage] = time.time() - started
        assert dvc.wait(timeout=600) == 0, f"dvc repro -s {stage} failed"
    sh("git", "add", "-A", cwd=repo)  # as a user commits a run: dvc.lock is in git
    sh("git", "commit", "-qm", "uninterrupted run", cwd=repo)
    return repo, snapshot(repo), durations


def stage_process(dvc: psutil.Process, stage: str, timeout: float = 120) -> psutil.Process:
    """The stage's python process under ``dvc repro`` (once DVC has started it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in dvc.children(recursive=True):
            try:
                if f"stages/{stage}.py" in " ".join(child.cmdline()):
                    return child
            except psutil.NoSuchProcess:
                continue
        assert dvc.is_running(), f"dvc repro ended before {stage} started"
        time.sleep(0.05)
    raise AssertionError(f"{stage} did not start within {timeout:.0f} s")


def kill_during(repo: Path, stage: str, delay: float) -> float:
    """Start ``dvc repro -f -s stage``, ``kill -9`` its whole process group ``delay`` s into the stage.
    Returns how long the stage had run (0 if it had finished by then: the kill then hit DVC's epilogue)."""
    env = clean_env(PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    dvc = subprocess.Popen(
        ["dvc", "repro", "-f", "-s", stage],
        cwd=repo,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        started = stage_process(psutil.Process(dvc.pid), stage)
        ran_from = time.monotonic()
        time.sleep(delay)
        ran = time.monotonic() - ran_from if started.is_running() else 0.0
        os.killpg(dvc.pid, signal.SIGKILL)
    finally:
        dvc.wait(timeout=60)
    return ran


def test_kill_9_in_each_stage_then_repro_matches_the_uninterrupted_run(baseline):
    repo, expected, durations = baseline
    rng = random.Random(SEED)
    points = []
    for stage in STAGES:
        for _ in range(KILLS_PER_STAGE):
            ran = kill_during(repo, stage, rng.uniform(0.05, 0.95) * durations[stage])
            where = f"a kill {ran:.1f} s into {stage}"
            if dvc_rwlock_broken(repo):
                (repo / ".dvc" / "tmp" / "rwlock").unlink()  # the recovery docs/robustness.md gives
                tally("kill -9 per stage", "landed in DVC's in-place write of .dvc/tmp/rwlock: rm it")
            if dvc_lock_broken(repo):
                # only DVC's own in-place write of dvc.lock can do this, after the stage has ended
                assert ran == 0, f"{where} left dvc.lock unreadable while the stage still ran"
                sh("git", "checkout", "dvc.lock", cwd=repo)  # the recovery docs/robustness.md gives
                tally("kill -9 per stage", "landed in DVC's in-place write of dvc.lock: git checkout dvc.lock")
            # 'modified' is fine only for a complete new version (the kill fell after that output's atomic write)
            now = snapshot(repo)
            half_written = {
                out: how
                for out, how in changed_outputs(repo, stage).items()
                if how != "deleted" and any(now.get(f) != expected.get(f) for f in expected if f.startswith(out))
            }
            assert not half_written, f"{where} left outputs that are neither gone nor complete: {half_written}"
            sh("dvc", "repro", cwd=repo)
            assert "up to date" in sh("dvc", "status", cwd=repo)
            now = snapshot(repo)
            differ = sorted(f for f in expected.keys() | now.keys() if expected.get(f) != now.get(f))
            assert not differ, f"after {where}, dvc repro wrote other outputs than the uninterrupted run: {differ}"
            running = [r.info.run_id for r in mlflow_runs(repo) if r.info.status == "RUNNING"]
            assert not running, f"after {where}: runs left RUNNING {running}"
            tally("kill -9 per stage", "repro completed, outputs bit-exact, no run left RUNNING")
            points.append(f"{stage}@{ran:.1f}s")
    ROBUSTNESS_FIGURES["kills"] = {
        "seed": SEED,
        "stage seconds": " ".join(f"{stage} {seconds:.1f}" for stage, seconds in durations.items()),
        "killed at": " ".join(points),
    }


def open_run_of(process: psutil.Process, repo: Path, timeout: float = 120) -> str:
    """The id of the MLflow run ``process`` holds open (RUNNING, tagged with it as owner), once it has one."""
    from cvae_pipeline.tracking.orphans import OWNER_TAG, owner

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.is_running(), "the stage ended before its MLflow run was seen open"
        with contextlib.suppress(Exception):  # the store mid-write; a child gone meanwhile
            tags = {owner(p.pid) for p in [process, *process.children(recursive=True)]}  # sh -c may fork
            for run in mlflow_runs(repo):
                if run.info.status == "RUNNING" and run.data.tags.get(OWNER_TAG) in tags:
                    return run.info.run_id
        time.sleep(0.02)
    raise AssertionError(f"no run of the stage was seen open within {timeout:.0f} s")


@pytest.mark.parametrize("stage", ["sample", "evaluate"])
def test_a_stage_killed_while_its_run_is_open_is_run_again_and_closes_that_run(baseline, stage):
    """The case a random kill meets only now and then: ``kill -9`` while the stage's MLflow run is open.
    DVC holds the stage's outputs for these very inputs and would check them out of its cache without
    running anything, leaving the run RUNNING; the run file DVC keeps no copy of makes it re-run the
    stage, which closes the run, and ends with the uninterrupted run's outputs."""
    repo, expected, _ = baseline
    env = clean_env(PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    dvc = subprocess.Popen(
        ["dvc", "repro", "-f", "-s", stage], cwd=repo, env=env, stdout=subprocess.DEVNULL, start_new_session=True
    )
    try:
        killed = open_run_of(stage_process(psutil.Process(dvc.pid), stage), repo)
        os.killpg(dvc.pid, signal.SIGKILL)
    finally:
        dvc.wait(timeout=60)
    out = sh("dvc", "repro", cwd=repo)
    assert f"Running stage '{stage}'" in out and "is cached" not in out, out
    assert snapshot(repo) == expected
    status = {r.info.run_id: r.info.status for r in mlflow_runs(repo)}
    assert "RUNNING" not in status.values(), status
    assert status[killed] in ("KILLED", "FINISHED"), status[killed]  # closed, or re-opened and finished
    tally("kill -9 while a stage's MLflow run is open", "re-run, run closed, outputs bit-exact")


def test_a_dvc_lock_cut_short_by_a_kill_is_recovered_from_git(baseline):
    """The state a kill inside DVC's in-place write of dvc.lock leaves (cut in the middle of an entry, as
    seen), made on purpose rather than waiting for the timing: DVC refuses the file, and the recovery
    docs/robustness.md gives ends with the uninterrupted run's outputs, nothing re-run."""
    repo, expected, _ = baseline
    sh("git", "commit", "-qam", "the last run", "--allow-empty", cwd=repo)  # the lock as a user last committed it
    lock = repo / "dvc.lock"
    text = lock.read_text()
    lock.write_text(text[: text.index("hash: md5", len(text) // 2) + len("hash: md5")] + "\n    md5: 4f")
    assert dvc_lock_broken(repo)
    sh("git", "checkout", "dvc.lock", cwd=repo)
    assert "Running stage" not in sh("dvc", "repro", cwd=repo)
    assert snapshot(repo) == expected


def test_a_dvc_rwlock_emptied_by_a_kill_is_removed_and_nothing_is_lost(baseline):
    """The state a kill inside DVC's in-place write of its stage lock leaves (seen once: a kill in
    ``prepare`` emptied ``.dvc/tmp/rwlock``), made on purpose: DVC refuses to run, and removing the file
    (no ``dvc`` process running) ends with the uninterrupted run's outputs, nothing re-run."""
    repo, expected, _ = baseline
    rwlock = repo / ".dvc" / "tmp" / "rwlock"
    rwlock.write_text("")
    assert dvc_rwlock_broken(repo)
    rwlock.unlink()
    assert "Running stage" not in sh("dvc", "repro", cwd=repo)
    assert snapshot(repo) == expected


def test_a_killed_training_resumes_into_its_run_and_ends_with_the_same_model(baseline):
    """The acceptance case: ``kill -9`` of ``dvc repro`` in train just after its first checkpoint, then
    ``dvc repro``: the same ``models/model.pt`` as the uninterrupted run, and the training's MLflow run
    is the one the killed process opened, resumed and FINISHED with every epoch's metrics."""

    repo, expected, _ = baseline
    checkpoint = repo / "models" / "checkpoints" / "last.pt"
    run_file = repo / "models" / "mlflow_run.json"
    assert not checkpoint.exists()  # the finished baseline left no resume file
    before = run_file.read_text()
    env = clean_env(PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    dvc = subprocess.Popen(
        ["dvc", "repro", "-f", "-s", "train"], cwd=repo, env=env, stdout=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 300
        while not checkpoint.exists():
            assert dvc.poll() is None and time.monotonic() < deadline, "train ended before its first checkpoint"
            time.sleep(0.01)
        os.killpg(dvc.pid, signal.SIGKILL)
    finally:
        dvc.wait(timeout=60)
    killed_in = max(mlflow_runs(repo), key=lambda r: r.info.start_time)  # the run the killed train opened
    assert not run_file.exists() or run_file.read_text() == before, "the killed train already claimed to be done"
    sh("dvc", "repro", cwd=repo)
    assert (repo / "models" / "model.pt").read_bytes() and snapshot(repo) == expected
    resumed = json.loads(run_file.read_text())["run_id"]
    assert resumed == killed_in.info.run_id, "the re-run trained into a new run instead of resuming"
    run = next(r for r in mlflow_runs(repo) if r.info.run_id == resumed)
    assert run.info.status == "FINISHED"
    history = (
        __import__("mlflow")
        .MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
        .get_metric_history(resumed, "train_objective")
    )
    assert sorted(m.step for m in history) == list(range(1, TRAIN["epochs"] + 1)), [m.step for m in history]
    tally("kill -9 of train after a checkpoint", "resumed into its run, same model")
