"""``make test`` runs the suite on two pytest-xdist workers: the robustness figures that tests on different
workers record must all reach the summary and the report, and each worker must get its share of the cores."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import clean_env

TESTS = Path(__file__).parent

TALLYING_FILE = """
from conftest import ROBUSTNESS_FIGURES, tally


def test_tallies():
    tally("kills", "re-ran bit-exact", {n})
    tally("kills", "{outcome}", 1, seconds={seconds})
    ROBUSTNESS_FIGURES.setdefault("fuzz x", {{}})["slowest case (s)"] = {seconds}
"""


def test_the_figures_of_tests_on_two_workers_all_reach_the_summary_and_the_report(tmp_path):
    shutil.copy(TESTS / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_a.py").write_text(TALLYING_FILE.format(n=3, outcome="one line", seconds=1.5))
    (tmp_path / "test_b.py").write_text(TALLYING_FILE.format(n=4, outcome="set aside", seconds=2.5))
    report = tmp_path / "report.json"
    env = clean_env(CVAE_ROBUSTNESS_REPORT=str(report))
    env.pop("OMP_NUM_THREADS", None)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadfile", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "kills: one line 1, re-ran bit-exact 7, set aside 1" in result.stdout, result.stdout[-3000:]
    saved = json.loads(report.read_text())
    assert saved["counts"]["kills"] == {"re-ran bit-exact": 7, "one line": 1, "set aside": 1}
    assert saved["figures"]["fuzz x"]["slowest case (s)"] == 2.5
    assert saved["figures"]["kills: slowest (s)"] == {"one line": 1.5, "set aside": 2.5}


def test_a_worker_gets_its_share_of_the_cores(monkeypatch):
    import conftest

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    monkeypatch.setattr(conftest.os, "cpu_count", lambda: 8)
    conftest.pytest_configure(None)
    assert conftest.os.environ["OMP_NUM_THREADS"] == "4"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # a user's own setting wins
    conftest.pytest_configure(None)
    assert conftest.os.environ["OMP_NUM_THREADS"] == "3"
