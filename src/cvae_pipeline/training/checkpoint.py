"""Checkpoints that survive a kill, and a fingerprint that says whether one may be resumed.

A checkpoint is written to a temporary file and renamed, so a process killed
mid-save leaves the previous checkpoint intact. It holds only tensors and
plain containers, so it loads with ``torch.load(weights_only=True)`` (no
arbitrary unpickling). Resuming is allowed only when the fingerprint — the
model and training params that shape the result, and the prepared data —
matches: a checkpoint left over from another configuration is never resumed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from ..io import atomic_file

FORMAT_VERSION = 1


def fingerprint(*parts: Any) -> str:
    """Stable hash of JSON-serialisable parts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def code_fingerprint(*packages: str) -> str:
    """Hash of the source of the given ``cvae_pipeline`` subpackages (as DVC's stage deps see it):
    a checkpoint written by other model or training code is not resumed."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(path.relative_to(root).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def save_checkpoint(path: Path, state: dict) -> None:
    with atomic_file(path) as tmp:
        torch.save({"format": FORMAT_VERSION, **state}, tmp)


def load_checkpoint(path: Path, expected_fingerprint: str) -> dict | None:
    """The checkpoint at ``path`` if it exists, is readable and matches; else None (start fresh)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt checkpoint must not block training: say so and start fresh
        print(f"warning: ignoring unreadable checkpoint {path} ({type(exc).__name__}: {exc})")
        return None
    if state.get("format") != FORMAT_VERSION or state.get("fingerprint") != expected_fingerprint:
        print(f"note: {path} belongs to another configuration; starting from scratch")
        return None
    return state
