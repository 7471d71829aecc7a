"""What every stage script shares: argument parsing and turning user errors into one line.

A :class:`~cvae_pipeline.errors.PipelineError` ends the stage with
``error: <message>`` on stderr and exit status 1, so ``dvc repro`` stops with
the reason on screen; so does a tracking server that fails mid-stage (down, its database or
artifact store down, a user without write permission), and a disk that fills up or a file-size limit
(an output written through ``io.atomic_*`` names itself; any other write names its file when the
error does). Anything else is a bug and keeps its traceback.

Queued experiments (``dvc queue start -j 2``) take the machine's cores in turns: each stage of a queued
experiment, which DVC runs in a copy under ``.dvc/tmp/exps/``, holds a machine-wide lock while it runs,
so two workers' stages do not each start every core's worth of torch threads (two such processes on two
cores slow each other several-fold). Turns rather than a share of threads each: a stage's weights then
do not depend on how many others ran beside it (a thread count changes the order of a convolution's
sums), and each stage runs at its full speed, as alone. Where the threads are already divided
(``OMP_NUM_THREADS`` set) or the stage runs under ``torchrun`` (its processes wait for each other), no
turns are taken.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from .config import DEFAULT_PARAMS_FILE
from .errors import PipelineError, write_failure

#: the oldest Python the project runs on: tarfile's extraction filters (data/archive.py) arrived in
#: 3.11.4. pyproject.toml's requires-python says the same (a test keeps the two in step).
MIN_PYTHON = (3, 11, 4)


def check_python(version: tuple[int, ...] = tuple(sys.version_info[:3])) -> None:
    if tuple(version) < MIN_PYTHON:
        have, need = ".".join(map(str, version)), ".".join(map(str, MIN_PYTHON))
        raise PipelineError(f"Python {have} is too old: cvae-pipeline needs Python >= {need}; recreate .venv with it")


def stage_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default=DEFAULT_PARAMS_FILE, help="params file (default: %(default)s)")
    return parser


#: the machine-wide lock whose holder is the one queued stage using every core
CORES_LOCK = Path(tempfile.gettempdir()) / "cvae-pipeline-cores.lock"


def takes_turns(cwd: Path | None = None) -> bool:
    """Whether this stage process must wait its turn for the cores: a queued experiment's (run in a copy
    under ``.dvc/tmp/exps/``) that would start a thread per core (no ``OMP_NUM_THREADS``, no torchrun)."""
    queued = ".dvc/tmp/exps/" in (cwd or Path.cwd()).resolve().as_posix() + "/"
    return queued and "OMP_NUM_THREADS" not in os.environ and int(os.environ.get("WORLD_SIZE", "1")) <= 1


@contextlib.contextmanager
def cores_turn():
    """Hold the cores for this stage while it runs, when it :func:`takes_turns`; the kernel frees the
    lock of a process that dies, so a killed stage never blocks the queue."""
    if not takes_turns():
        yield
        return
    from filelock import FileLock, Timeout

    lock = FileLock(str(CORES_LOCK))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print("waiting for the cores: another queued experiment's stage is using them", flush=True)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def end_active_runs(status: str) -> None:
    """Mark the MLflow runs this process left open ``status`` (FAILED, KILLED). Without it a stage that
    fails between starting its run and entering the run's ``with`` block (an artifact upload to a store
    that is down) leaves the run to MLflow's exit hook, which marks it FINISHED."""
    mlflow = sys.modules.get("mlflow")
    if mlflow is None:
        return
    try:
        for _ in range(8):  # nested runs: the innermost first
            if mlflow.active_run() is None:
                return
            mlflow.end_run(status)
    except Exception:  # the store itself is gone: nothing more can be recorded
        pass


def run_stage(main: Callable[[], None]) -> None:
    """Call ``main`` and exit: 0 on success, 1 with one line on a user error, 130 on Ctrl-C."""
    try:
        check_python()
        with cores_turn():
            main()
    except PipelineError as exc:
        end_active_runs("FAILED")
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        end_active_runs("KILLED")
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        end_active_runs("FAILED")
        # only a stage that tracks has loaded the store module, and only it can fail that way
        store = sys.modules.get(f"{__package__}.tracking.store")
        failure = write_failure(exc, getattr(exc, "filename", None)) or (store.tracking_failure(exc) if store else None)
        if failure is None:
            raise
        print(f"error: {failure}", file=sys.stderr)
        sys.exit(1)
    sys.exit(0)
