"""What every stage script shares: argument parsing, and how it ends — 0, or one line and 1.

A :class:`~cvae_pipeline.errors.PipelineError` ends the stage with
``error: <message>`` on stderr and exit status 1, so ``dvc repro`` stops with
the reason on screen; so does a tracking server that fails mid-stage (down, its database or
artifact store down, a user without write permission), and a disk that fills up or a file-size limit
(an output written through ``io.atomic_*`` names itself; any other write names its file when the
error does). Anything else is a bug and keeps its traceback.

A queued experiment's stage first waits its turn for the cores (:mod:`.turns`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from .config import DEFAULT_PARAMS_FILE
from .errors import PipelineError, translate
from .turns import cores_turn

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
        failure = translate(exc)
        if failure is None:
            raise
        print(f"error: {failure}", file=sys.stderr)
        sys.exit(1)
    sys.exit(0)
