"""Runs whose process died: found and closed by the next stage on the same machine.

A stage killed with ``kill -9`` (or by a power cut, or the OOM killer) cannot end its MLflow run: the
run would stay RUNNING for ever, and the UI would show a run that is neither going nor failed. So
every stage that opens a run tags it with its owner — machine, process id and the process's start
time (a recycled pid is another process) — and every stage, when it connects to the store, marks
the RUNNING runs of dead owners on this machine KILLED. A run that is resumed later (``train``
from its checkpoint) simply becomes RUNNING again. Runs of other machines are left alone: whether
their process lives cannot be told from here.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

OWNER_TAG = "cvae.owner"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux ``/proc``), None if there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the command name may hold spaces and ')'


def owner(pid: int | None = None) -> str:
    """``host/pid/start``: names one process on one machine, even after its pid is recycled."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}/{pid}/{_start_time(pid) or '?'}"


def owner_alive(tag: str) -> bool | None:
    """Whether the process a tag names is alive; None when that cannot be told from here."""
    host, _, rest = tag.partition("/")
    pid, _, start = rest.partition("/")
    if host != socket.gethostname() or not pid.isdigit() or start == "?" or _start_time(os.getpid()) is None:
        return None  # another machine, or no /proc to tell by (not Linux)
    return _start_time(int(pid)) == start


def claim(run_id: str) -> None:
    """Tag ``run_id`` as this process's (on opening or re-opening it)."""
    import mlflow

    mlflow.MlflowClient().set_tag(run_id, OWNER_TAG, owner())


def close_orphans() -> list[str]:
    """Mark KILLED every RUNNING run whose owner on this machine is dead; their ids."""
    import mlflow

    client = mlflow.MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return []
    running = client.search_runs(experiments, filter_string="attributes.status = 'RUNNING'", max_results=1000)
    closed = []
    for run in running:
        tag = run.data.tags.get(OWNER_TAG)
        if tag and owner_alive(tag) is False:
            try:
                client.set_tag(run.info.run_id, "cvae.closed", "its process died (killed); closed by a later stage")
                client.set_terminated(run.info.run_id, "KILLED")
            except mlflow.exceptions.MlflowException:
                continue  # another user's run on a shared server, which this user may not edit: theirs to close
            closed.append(run.info.run_id)
    if closed:
        print(f"note: marked {len(closed)} MLflow run(s) KILLED whose stage process died: {', '.join(closed)}")
    return closed
