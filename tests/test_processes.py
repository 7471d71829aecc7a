"""The team stack's process helpers: a server that has exited counts as gone even while it waits to be
reaped by a parent that is not us (``team down`` runs in another process than the ``team up`` that
started it), and ``stop`` ends several process groups at once."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from conftest import group_alive

from cvae_pipeline.team.processes import alive, stop

#: a parent that starts a child in its own session, prints its pid, and never reaps it
PARENT = """
import subprocess, sys, time
child = subprocess.Popen(["sleep", sys.argv[1]], start_new_session=True)
print(child.pid, flush=True)
time.sleep(60)
"""


def state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2]


def test_an_exited_process_that_another_parent_has_not_reaped_is_gone():
    parent = subprocess.Popen([sys.executable, "-c", PARENT, "2"], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        assert alive(child) and group_alive(child)  # running
        deadline = time.monotonic() + 30
        while state(child) != "Z":
            assert time.monotonic() < deadline, "the child did not exit"
            time.sleep(0.05)
        assert not alive(child) and not group_alive(child)  # exited, not reaped: gone
    finally:
        parent.kill()
        parent.wait()


def test_stop_signals_every_group_before_waiting(tmp_path):
    """Two servers that take a second to shut down: both get SIGTERM before either has ended."""
    script = """
import os, signal, sys, time
from pathlib import Path
def shut_down(*_):
    Path(sys.argv[1], f"{os.getpid()}.term").write_text(repr(time.time()))
    time.sleep(1)
    Path(sys.argv[1], f"{os.getpid()}.exit").write_text(repr(time.time()))
    sys.exit(0)
signal.signal(signal.SIGTERM, shut_down)
Path(sys.argv[1], f"{os.getpid()}.ready").touch()
time.sleep(60)
"""
    servers = [
        subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], start_new_session=True) for _ in range(2)
    ]
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("*.ready"))) < 2:
        assert time.monotonic() < deadline, "the servers did not start"
        time.sleep(0.05)
    stop(*(s.pid for s in servers), timeout=20)
    assert all(s.wait(timeout=5) == 0 for s in servers)  # each ended by its own handler, not SIGKILL

    def times(kind: str) -> list[float]:
        return [float((tmp_path / f"{s.pid}.{kind}").read_text()) for s in servers]

    assert max(times("term")) < min(times("exit")), "stopped one after the other"
