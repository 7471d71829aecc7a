from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))  # tests/archives.py

REPO = Path(__file__).resolve().parents[1]
SHARED_ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def write_params(directory: Path, sources: list[dict], **prepare) -> Path:
    """A params.yaml like the repository's, with these sources and prepare overrides."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["sources"] = sources
    params["prepare"].update(prepare)
    path = directory / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def run_stage(stage: str, cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``stages/<stage>.py`` as DVC would (a subprocess in the workspace)."""
    return subprocess.run(
        [sys.executable, str(REPO / "stages" / f"{stage}.py"), *args],
        cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=900,
    )


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    return ws
