"""What a run says about where it came from, and its params and metrics flattened to MLflow's keys."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
from typing import Any

from .orphans import OWNER_TAG, owner
from .store import project_root


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, cwd=project_root()
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def run_tags(stage: str) -> dict[str, str]:
    """Tags that say where a run came from: commit, DVC experiment, baseline, machine and its CPU."""
    from ..runtime import cpu_description

    tags = {
        OWNER_TAG: owner(),
        "stage": stage,
        "machine": f"{socket.gethostname()} ({platform.machine()}, {os.cpu_count()} cpus)",
        "cpu": cpu_description(),
    }
    if commit := git_commit():
        tags["git_commit"] = commit
        tags["mlflow.source.git.commit"] = commit
    if name := os.environ.get("DVC_EXP_NAME"):
        tags["dvc_experiment"] = name
    if baseline := os.environ.get("DVC_EXP_BASELINE_REV"):
        tags["dvc_baseline_rev"] = baseline
    return tags


def flatten_params(params: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"train": {"lr": 1e-3}}`` -> ``{"train.lr": "0.001"}``; lists become JSON strings."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_params(value, f"{name}."))
        elif isinstance(value, list):
            flat[name] = json.dumps(value)[:6000]
        else:
            flat[name] = str(value)
    return flat


def flatten_metrics(metrics: dict, prefix: str = "") -> dict[str, float]:
    """``{"per_class": {"cat": {"fid": 1}}}`` -> ``{"per_class.cat.fid": 1.0}`` (for MLflow)."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update(flatten_metrics(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)):
            flat[f"{prefix}{key}"] = float(value)
    return flat
