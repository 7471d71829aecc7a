"""Server processes of the stack: ports, start, readiness, stop.

Each server runs in its own session (process group), so stopping it also stops the workers it
forked (``mlflow server`` runs uvicorn/gunicorn children) and nothing outlives ``team-down``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import PipelineError

#: SeaweedFS opens each service's port + 10000 for gRPC
GRPC_OFFSET = 10000


class StackError(PipelineError):
    """A service of the team stack cannot be started, reached or stopped."""


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int, with_grpc: bool = False) -> list[int]:
    """``count`` distinct free loopback ports; ``with_grpc``: each one's port + 10000 is free too."""
    found: list[int] = []
    while len(found) < count:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if with_grpc and (port + GRPC_OFFSET > 65535 or not port_is_free(port + GRPC_OFFSET)):
            continue
        if port not in found and not (with_grpc and port + GRPC_OFFSET in found):
            found.append(port)
    return found


def start(
    command: list[str],
    log: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> int:
    """Start ``command`` in a new session, its output appended to ``log`` (0600: a server's log names
    users, paths and failed logins), with umask 077 (what the server creates is its own); its pid."""
    descriptor = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(descriptor, 0o600)  # a log written before the locks was 0644
    with os.fdopen(descriptor, "ab") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
            umask=0o077,
        )
    return process.pid


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of this process counts as gone
        finished, _ = os.waitpid(pid, os.WNOHANG)
        return finished == 0
    except ChildProcessError:
        return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """Whether ``pid`` has exited and only waits to be reaped by a parent that is not us (``team down``
    runs in another process than the ``team up`` that started the servers)."""
    fields = _stat_fields(Path(f"/proc/{pid}/stat"))
    return fields is not None and fields[0] == "Z"


def _stat_fields(path: Path) -> list[str] | None:
    """``/proc/<pid>/stat`` after the parenthesised name (state, ppid, pgrp, ...); None once it is gone."""
    try:
        stat = path.read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def wait_until(ready: Callable[[], bool], what: str, pid: int, log: Path, timeout: float = 90) -> None:
    """Poll ``ready`` until it holds; fail with the log's tail if the process dies or time runs out."""
    deadline = time.monotonic() + timeout
    while not ready():
        if not alive(pid):
            raise StackError(f"{what} exited while starting; its log {log} ends: {tail(log)}")
        if time.monotonic() > deadline:
            stop(pid)
            raise StackError(f"{what} did not become ready in {timeout:.0f} s; see {log}: {tail(log)}")
        time.sleep(0.3)


def tail(log: Path, lines: int = 3) -> str:
    try:
        text = Path(log).read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(line.strip() for line in text[-lines:])


def stop(*pids: int | None, timeout: float = 20) -> None:
    """SIGTERM the process groups of ``pids`` (the sessions :func:`start` made) at once, wait for their
    leaders, SIGKILL what is left after ``timeout``. At once: each server takes seconds to shut down
    (MLflow ~3 s, SeaweedFS ~4 s here), and one after the other those add up."""
    signalled = []
    for pid in pids:
        if alive(pid):
            try:
                os.killpg(pid, signal.SIGTERM)
                signalled.append(pid)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout
    while any(alive(pid) for pid in signalled) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in signalled:
        try:
            os.killpg(pid, signal.SIGKILL)  # the leader and any worker it left behind
        except ProcessLookupError:
            pass
