"""``errors``' translation of library failures, each case raised by the real library.

The translation reads types where the library offers them and wording only where it does not; these
tests make numpy, torch, SQLite (under SQLAlchemy), and MLflow's REST client against a real HTTP server
on loopback raise each case, so a library upgrade that changes what the translation relies on fails here
rather than turning a user's one-line error back into a traceback.
"""

from __future__ import annotations

import http.server
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from cvae_pipeline.errors import (
    PipelineError,
    TrackingError,
    WriteError,
    http_status,
    reading,
    sqlite_full,
    tracking_failure,
    translate,
    write_failure,
    write_failure_into,
)

LIMIT = 64 * 1024  # bytes: the file-size limit each write below runs into


def _under_file_size_limit(snippet: str, tmp_path: Path) -> str:
    """Run ``snippet`` (which writes ``target`` and binds the exception it raised to ``exc``) in a child
    process whose file-size limit is :data:`LIMIT`, and return the translated line it prints."""
    body = textwrap.indent(textwrap.dedent(snippet).strip(), "    ")
    script = "\n".join(
        [
            "import resource, signal",
            "from pathlib import Path",
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead of killing",
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({LIMIT}, {LIMIT}))",
            "from cvae_pipeline.errors import write_failure",
            f"target = Path({str(tmp_path / 'out.bin')!r})",
            "exc = None",
            "try:",
            body,
            "except Exception as caught:",
            "    exc = caught",
            "print(type(exc).__name__, '|', write_failure(exc, target, written=target) if exc else 'no error')",
        ]
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_python_write_past_the_limit_is_efbig_by_its_errno(tmp_path):
    line = _under_file_size_limit("target.write_bytes(bytes(1 << 20))", tmp_path)
    assert line.startswith("OSError |") and "file too large for the file-size limit, EFBIG" in line


def test_numpys_errno_less_short_write_is_told_by_the_system(tmp_path):
    line = _under_file_size_limit(
        """
        import numpy as np
        np.zeros(1 << 20, np.uint8).tofile(target)
        """,
        tmp_path,
    )
    assert line.startswith("OSError |") and "could not be written (file too large" in line


def test_torch_saves_short_write_is_told_by_the_system(tmp_path):
    line = _under_file_size_limit(
        """
        import torch
        torch.save({"w": torch.zeros(1 << 18)}, target)
        """,
        tmp_path,
    )
    assert line.startswith("RuntimeError |") and "could not be written (file too large" in line


def test_a_full_sqlite_database_is_known_by_its_result_code_under_sqlalchemy(tmp_path):
    """SQLite's SQLITE_FULL, raised for real (a page limit), wrapped as MLflow's store wraps it."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(sqlalchemy.exc.OperationalError) as raised, engine.begin() as db:
        db.exec_driver_sql("PRAGMA max_page_count = 2")
        db.exec_driver_sql("CREATE TABLE runs (blob TEXT)")
        db.exec_driver_sql("INSERT INTO runs VALUES (?)", ("x" * 100_000,))
    assert isinstance(raised.value.orig, sqlite3.OperationalError)
    assert raised.value.orig.sqlite_errorcode == sqlite3.SQLITE_FULL  # what the translation reads
    assert sqlite_full(raised.value)
    assert "SQLite: database or disk is full" in str(write_failure(raised.value))
    assert not sqlite_full(sqlite3.OperationalError("no such table: runs"))


def test_a_write_into_a_temporary_sibling_names_the_output(tmp_path):
    tmp, target = tmp_path / ".model.pt.tmp-1-x", tmp_path / "model.pt"
    inner = write_failure(OSError(28, "No space left on device"), tmp / "weights.bin")
    failure = write_failure_into(inner, tmp, target)
    assert (
        isinstance(failure, WriteError) and str(target / "weights.bin") in str(failure) and ".tmp-" not in str(failure)
    )
    assert write_failure_into(ValueError("a bug"), tmp, target) is None


def test_a_damaged_file_is_named_with_the_stage_that_re_creates_it(tmp_path):
    path = tmp_path / "train_images.npy"
    np.save(path, np.zeros((4, 3, 32, 32), np.uint8))
    path.write_bytes(path.read_bytes()[:-100])  # truncated: numpy raises ValueError
    with pytest.raises(PipelineError, match=r"train_images.npy: damaged .*ValueError.*`dvc repro -f prepare`"):
        with reading(path, "prepare"):
            np.load(path)


# --- the tracking server, for real on loopback --------------------------------------------------------------
class _Answers(http.server.BaseHTTPRequestHandler):
    """Answers every request with the server's ``status`` and a plain-text body, as MLflow's basic-auth
    app (401, 403) and a proxy in front of a dead server (5xx) do."""

    def _answer(self):
        self.send_response(self.server.status)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(b"no")

    do_GET = do_POST = _answer

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd
    httpd.shutdown()


def _mlflow_failure(uri: str, monkeypatch) -> Exception:
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    with pytest.raises(Exception) as raised:
        MlflowClient(uri).search_experiments()
    return raised.value


@pytest.mark.parametrize(
    ("status", "line"),
    [
        (401, "refused the credentials of user 'ann' (401 Unauthorized)"),
        (403, "user 'ann' may not write there (403 Permission denied)"),
        (503, "failed (503: its database is likely down or full)"),
        (500, "failed (500: its database is likely down or full)"),
    ],
)
def test_each_server_answer_gets_its_own_line(server, monkeypatch, status, line):
    """MLflow's REST client raising for a real answer (5xx after its retries run out)."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "ann")
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    server.status = status
    exc = _mlflow_failure(uri, monkeypatch)
    assert http_status(exc) == status
    failure = tracking_failure(exc, uri)
    assert isinstance(failure, TrackingError) and line in str(failure), str(exc)


def test_a_server_nobody_listens_on_is_not_reachable(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    uri = f"http://127.0.0.1:{port}"
    exc = _mlflow_failure(uri, monkeypatch)
    assert http_status(exc) is None
    assert str(tracking_failure(exc, uri)).startswith(f"MLflow tracking store {uri} is not reachable (")


def test_what_is_no_storage_or_tracking_failure_keeps_its_traceback():
    """A bug is not translated: MLflow's own complaint about its input, a plain ValueError."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    with pytest.raises(MlflowException) as raised:
        mlflow.set_experiment(experiment_name="")  # MLflow refuses an empty name, itself
    assert raised.value.error_code == "INVALID_PARAMETER_VALUE"
    assert tracking_failure(raised.value, "http://x") is None
    assert tracking_failure(MlflowException("bad", INVALID_PARAMETER_VALUE), "http://x") is None
    assert translate(ValueError("x")) is None
