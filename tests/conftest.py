from __future__ import annotations

import collections
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))  # tests/archives.py

from hypothesis import HealthCheck, settings  # noqa: E402

# Fuzzing (tests/test_fuzz.py): seeded, so CI fails the same way twice; a few hundred cases per test by
# default, 10,000 with --hypothesis-profile=full (benchmarks/robustness.py). Time per case is bounded by
# the tests themselves: hypothesis's deadline would turn a loaded machine into flaky failures.
_FUZZ = {"derandomize": True, "deadline": None, "print_blob": True}
_FUZZ["suppress_health_check"] = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large]
settings.register_profile("ci", max_examples=300, **_FUZZ)
settings.register_profile("full", max_examples=10_000, **_FUZZ)
settings.load_profile("ci")

REPO = Path(__file__).resolve().parents[1]
SHARED_ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
BIN = Path(sys.executable).parent  # the venv's console scripts: dvc, mlflow, cvae


#: the smallest model and training the stage tests use (seconds per stage on two cores)
TINY_MODEL = {"backbone": "mlp", "width": 16, "latent_dim": 4, "latent_resolution": 1}
TINY_TRAIN = {"epochs": 1, "batch_size": 64}

# --- the robustness figures ----------------------------------------------------------------------
# Fault, fuzz and load tests count what they injected and how it ended; the counts are printed after
# the test run and, with CVAE_ROBUSTNESS_REPORT=<file.json>, written there (benchmarks/robustness.py).
ROBUSTNESS: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
ROBUSTNESS_FIGURES: dict[str, dict] = {}


def tally(area: str, outcome: str, n: int = 1, seconds: float | None = None) -> None:
    """Count ``n`` cases of ``area`` that ended in ``outcome``; ``seconds``: the slowest such case is kept."""
    ROBUSTNESS[area][outcome] += n
    if seconds is not None:
        slowest = ROBUSTNESS_FIGURES.setdefault(f"{area}: slowest (s)", {})
        slowest[outcome] = round(max(seconds, slowest.get(outcome, 0.0)), 1)


def _merge_figures(counts: dict[str, dict], figures: dict[str, dict]) -> None:
    for area, outcomes in counts.items():
        ROBUSTNESS[area].update(outcomes)
    for name, values in figures.items():
        merged = ROBUSTNESS_FIGURES.setdefault(name, {})
        for key, value in values.items():  # every figure is a maximum (slowest case, largest growth)
            merged[key] = max(value, merged.get(key, value))


def pytest_configure(config):
    """Under pytest-xdist (``make test`` runs two workers), each worker and the stages it starts get
    their share of the cores: two workers whose torch each spins two OpenMP threads on two cores slow
    each other several-fold."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers and "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // int(workers)))


#: the longest files first: ``make test`` hands whole files to two workers in this order, so the long
#: ones start at once and the short ones fill the gaps (xdist's default order, by test count, says
#: little about a file's length)
LONGEST_FIRST = (
    "test_pipeline_dvc.py",
    "test_team_stack.py",
    "test_speed_benchmark.py",
    "test_kills.py",
    "test_rerun_computes.py",
    "test_faults.py",
    "test_cli_metrics.py",
    "test_reported_defects.py",
    "test_tracking_server.py",
    "test_training.py",
    "test_serving.py",
    "test_fuzz.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its order


def pytest_sessionfinish(session):
    """A worker hands its robustness tallies to the controller, which prints and saves them."""
    if hasattr(session.config, "workeroutput"):
        session.config.workeroutput["robustness"] = json.dumps(
            {"counts": {k: dict(v) for k, v in ROBUSTNESS.items()}, "figures": ROBUSTNESS_FIGURES}
        )


@pytest.hookimpl(optionalhook=True)  # an xdist hook: absent when pytest runs without -n
def pytest_testnodedown(node, error):
    report = json.loads(getattr(node, "workeroutput", {}).get("robustness", "{}") or "{}")
    _merge_figures(report.get("counts", {}), report.get("figures", {}))


def pytest_terminal_summary(terminalreporter):
    if not ROBUSTNESS and not ROBUSTNESS_FIGURES:
        return
    terminalreporter.section("robustness figures")
    for area, counts in sorted(ROBUSTNESS.items()):
        terminalreporter.write_line(f"{area}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    for name, figures in sorted(ROBUSTNESS_FIGURES.items()):
        terminalreporter.write_line(f"{name}: " + ", ".join(f"{k} {v}" for k, v in figures.items()))
    out = os.environ.get("CVAE_ROBUSTNESS_REPORT")
    if out:
        report = {"counts": {k: dict(v) for k, v in ROBUSTNESS.items()}, "figures": ROBUSTNESS_FIGURES}
        Path(out).write_text(json.dumps(report, indent=2) + "\n")


def free_port() -> int:
    """A loopback port nobody listens on (at the time of asking)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(
    command: list[str], ready_url: str, log_path: Path, env: dict[str, str], timeout: float = 120
) -> Iterator[subprocess.Popen]:
    """Start a real server process, wait until ``ready_url`` answers 200, stop it afterwards.

    Fails with the tail of its log if it exits or does not come up within ``timeout`` seconds.
    """
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    with urllib.request.urlopen(ready_url, timeout=5) as response:
                        if response.status == 200:
                            break
                except OSError:
                    pass
                assert server.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, f"{command[:3]} did not come up in {timeout:.0f} s"
                time.sleep(1)
            yield server
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()


def write_params(directory: Path, sources: list[dict], **prepare) -> Path:
    """A params.yaml like the repository's, with these sources and prepare overrides."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["sources"] = sources
    params["prepare"].update(prepare)
    path = directory / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` as a module (the folder is scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def clean_env(**overrides: str) -> dict[str, str]:
    """The environment for a subprocess: no tracking URI unless a test sets one (so runs go
    to the workspace's own SQLite store), no DVC variables from an outer ``dvc`` call."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI" and not k.startswith("DVC_")}
    return {**env, **overrides}


def kill_at_first_checkpoint(command: list[str], workspace: Path, env: dict[str, str]) -> int:
    """Start a training ``command`` in ``workspace``, ``kill -9`` it and every process it started (torchrun's
    workers run in sessions of their own) once its first checkpoint is written; the checkpoint's epoch."""
    import psutil
    import torch

    proc = subprocess.Popen(command, cwd=workspace, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = workspace / "models" / "checkpoints" / "last.pt"
    deadline = time.time() + 300
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    with contextlib.suppress(psutil.NoSuchProcess):
        launcher = psutil.Process(proc.pid)
        for process in [*launcher.children(recursive=True), launcher]:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
    proc.wait()
    return torch.load(checkpoint, weights_only=True)["epoch"]


def run_stage(stage: str, cwd: Path, *args: str, env: dict | None = None, **popen) -> subprocess.CompletedProcess:
    """Run ``stages/<stage>.py`` as DVC would (a subprocess in the workspace)."""
    return subprocess.run(
        [sys.executable, str(REPO / "stages" / f"{stage}.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=clean_env(**(env or {})),
        timeout=900,
        **popen,
    )


@pytest.fixture(autouse=True)
def _restore_tracking_uri():
    """``mlflow.set_tracking_uri`` exports MLFLOW_TRACKING_URI; keep it from leaking between tests."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    return ws


def make_prepared(directory: Path, train_per_class: int = 20, val_per_class: int = 5, test_per_class: int = 5) -> Path:
    """A prepared dataset (as the ``prepare`` stage writes it) of class-coloured noise images."""
    import numpy as np
    from archives import CLASSES, class_images

    from cvae_pipeline.data.prepared import save_prepared
    from cvae_pipeline.data.readers import Split

    splits = {}
    for seed, (name, k) in enumerate((("train", train_per_class), ("val", val_per_class), ("test", test_per_class))):
        images = np.concatenate([class_images(c, k, seed).transpose(0, 3, 1, 2) for c in range(10)])
        splits[name] = Split(images, np.repeat(np.arange(10), k))
    save_prepared(directory, splits, CLASSES, {"synthetic": True, "sizes": [train_per_class, val_per_class]})
    return directory


def train_workspace(root: Path, model: dict, train: dict, train_per_class: int = 20) -> Path:
    """A workspace ready for ``stages/train.py``: params.yaml + data/prepared."""
    root.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["model"].update(model)
    params["train"].update(train)
    if params["model"]["latent_resolution"] == 1:
        params["prior"]["denoiser"] = "mlp"  # a flat z: the default conv denoiser needs a latent map
    params["refine"].update(TINY_REFINE)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    make_prepared(root / "data" / "prepared", train_per_class)
    return root


def _section(model, name: str, overrides: dict):
    """A params section as ``params.yaml`` has it, with ``overrides``: the tests' configs differ from
    the real defaults only where they say so (the schema has no defaults of its own)."""
    values = yaml.safe_load((REPO / "params.yaml").read_text())[name]
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key] = {**values[key], **value}
        else:
            values[key] = value
    return model.model_validate(values)


def model_params(**overrides):
    from cvae_pipeline.config import ModelParams

    return _section(ModelParams, "model", overrides)


def train_params(**overrides):
    from cvae_pipeline.config import TrainParams

    return _section(TrainParams, "train", overrides)


def prepare_params(**overrides):
    from cvae_pipeline.config import PrepareParams

    return _section(PrepareParams, "prepare", overrides)


def refine_params(**overrides):
    from cvae_pipeline.config import RefineParams

    return _section(RefineParams, "refine", overrides)


#: a refinement that runs both of its phases (discriminator alone, then adversarial) in a few tiny steps
TINY_REFINE = {"steps": 3, "batch_size": 8, "delay": 1, "checkpoint_every": 2, "disc_width": 8}


def prior_params(**overrides):
    from cvae_pipeline.config import PriorParams

    return _section(PriorParams, "prior", overrides)


#: a diffusion prior small enough to train in a second on a tiny workspace (whose flat latents need the MLP)
TINY_PRIOR = {"denoiser": "mlp", "width": 32, "blocks": 2, "epochs": 2, "batch_size": 64, "timesteps": 100}
#: the smallest model with a latent map (2x4x4), for the conv denoiser
TINY_MAP_MODEL = {"backbone": "resnet", "width": 8, "blocks": 0, "latent_dim": 32, "latent_resolution": 4}


@pytest.fixture(scope="session")
def team_stack():
    """The team stack (PostgreSQL, SeaweedFS S3, MLflow with basic auth), started as a user starts it
    (``cvae team up``) and stopped with ``cvae team down``, which must leave no process behind.

    Its state folder is under /tmp with mode 0711 rather than pytest's private tmp folder: as root,
    the cluster belongs to the ``postgres`` user, who must be able to reach it."""
    import shutil
    import tempfile

    from cvae_pipeline.team import Stack, StackError
    from cvae_pipeline.team.postgres import binaries
    from cvae_pipeline.team.processes import alive

    try:
        binaries()
    except StackError as exc:
        pytest.skip(str(exc))
    directory = Path(tempfile.mkdtemp(prefix="cvae-team-"))
    env = clean_env(PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    cli = [str(BIN / "cvae"), "team"]
    up = subprocess.run(
        [*cli, "up", str(directory), "--dvc-repo", str(directory)], env=env, capture_output=True, text=True
    )
    assert up.returncode == 0, up.stdout + up.stderr
    stack = Stack(directory)
    assert f"export MLFLOW_TRACKING_URI={stack.server.url}" in up.stdout
    try:
        yield stack
    finally:
        stack = Stack(directory)  # a test may have restarted it on new ports
        pids = list(stack.state.get("pids", {}).values())
        down = subprocess.run([*cli, "down", str(directory)], env=env, capture_output=True, text=True)
        assert down.returncode == 0, down.stdout + down.stderr
        assert not any(alive(pid) or group_alive(pid) for pid in pids), "team down left a process behind"
        assert not stack.postgres.running()
        shutil.rmtree(directory, ignore_errors=True)


# --- a tiny copy of the pipeline in its own git + DVC repository ------------------------------------


def sh(*cmd: str, cwd: Path) -> str:
    env = clean_env(PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def write_tiny_params(directory: Path, archive_dir: Path, precision: str | None = None, **sections: dict) -> Path:
    """``directory/params.yaml``: the real pipeline, shrunk (a tiny archive written into ``archive_dir``, a
    small model, one epoch, the tiny prior, 20 samples: their Inception pass is the dearest part of a tiny
    ``evaluate``); ``sections`` override (``train={"epochs": 3}``).

    ``precision`` pins train, prior and sample to one precision, for tests that compare outputs across
    machines or against a fixed expectation (``auto`` is bf16 on a CPU with native bf16, fp32 elsewhere)."""
    from archives import make_image_folder_archive, sha256

    archive = make_image_folder_archive(archive_dir / "cifar.tar.gz", 12, 4)
    params = write_params(directory, [{"uri": str(archive), "sha256": sha256(archive)}], val_fraction=0.25)
    text = yaml.safe_load(params.read_text())
    text["model"].update(backbone="mlp", width=32, latent_dim=8, latent_resolution=1)
    text["train"].update(epochs=1, batch_size=32)
    text["prior"].update(TINY_PRIOR)
    text["sample"].update(per_class=2, steps=5, guidance=3.0, temperature=1.0)  # the tests re-sample at 0.5
    text["evaluate"].update(kid_subsets=10, probe_folds=2, iw_samples=2)
    text["refine"].update(TINY_REFINE)
    for section, values in sections.items():
        text[section].update(values)
    if precision is not None:
        for section in ("train", "prior", "sample"):
            text[section]["precision"] = precision
    params.write_text(yaml.safe_dump(text, sort_keys=False))
    return params


def make_pipeline_repo(tmp_path: Path, precision: str | None = None, **sections: dict) -> Path:
    """A copy of the project's pipeline in a new git + DVC repo with :func:`write_tiny_params`."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(REPO / name, repo / name)
    shutil.copytree(REPO / "stages", repo / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    write_tiny_params(repo, tmp_path, precision, **sections)
    sh("git", "init", "-q", cwd=repo)
    sh("git", "config", "user.email", "test@example.com", cwd=repo)
    sh("git", "config", "user.name", "test", cwd=repo)
    sh("dvc", "init", "-q", cwd=repo)
    sh("dvc", "config", "core.analytics", "false", cwd=repo)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "pipeline", cwd=repo)
    return repo


def group_alive(pid: int | None) -> bool:
    """Whether any process of the session ``team.processes.start`` made for ``pid`` is left (forked workers
    too); exited processes waiting to be reaped do not count. What the tests check ``team down`` against."""
    from cvae_pipeline.team.processes import _stat_fields

    if not pid:
        return False
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if not Path("/proc/self/stat").is_file():
        return True  # no procfs: the group exists, zombies or not
    for path in Path("/proc").glob("[0-9]*/stat"):
        fields = _stat_fields(path)  # None: ended while we looked
        if fields is not None and fields[2] == str(pid) and fields[0] != "Z":
            return True
    return False
