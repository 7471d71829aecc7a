"""What every stage script shares: argument parsing and turning user errors into one line.

A :class:`~cvae_pipeline.errors.PipelineError` ends the stage with
``error: <message>`` on stderr and exit status 1, so ``dvc repro`` stops with
the reason on screen; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from .config import DEFAULT_PARAMS_FILE
from .errors import PipelineError

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


def run_stage(main: Callable[[], None]) -> None:
    """Call ``main`` and exit: 0 on success, 1 with one line on a user error, 130 on Ctrl-C."""
    try:
        check_python()
        main()
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(0)
