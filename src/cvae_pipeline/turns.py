"""Turns at the cores for queued experiments.

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

import contextlib
import os
import tempfile
from pathlib import Path

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
