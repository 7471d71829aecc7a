"""Checkpoints that survive a kill, and the key that says whether one may be resumed.

A checkpoint exists only to finish an *interrupted* run: it is written after every epoch (to a
temporary file and renamed, so a process killed mid-save leaves the previous one intact) and deleted
once the stage's outputs are written, so a completed stage leaves nothing a later run could "resume"
into its output. It holds only tensors and plain containers, so it loads with
``torch.load(weights_only=True)`` (no arbitrary unpickling).

Resuming is allowed only when the checkpoint's key equals :func:`stage_fingerprint` of the stage:
what DVC keys the stage on — the content of every dep ``dvc.yaml`` lists for it and the value of every
param it names. One definition, not a second list: a change that makes ``dvc repro`` re-run the stage
makes its checkpoint another run's, and the stage computes from scratch.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import torch
import yaml

from ..errors import PipelineError
from ..io import atomic_file

FORMAT_VERSION = 1


def fingerprint(*parts: Any) -> str:
    """Stable hash of JSON-serialisable parts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


#: the repository the running code belongs to (``src/cvae_pipeline/training/`` is three levels down)
CODE_ROOT = Path(__file__).resolve().parents[3]
#: what DVC itself skips inside a dep folder (.dvcignore): bytecode caches
_IGNORED = ("__pycache__", ".pyc")


def _interpolate(text: str, params: dict) -> str:
    """``data/prepared/${evaluate.reference}_images.npy`` with the param's value, as DVC templates it."""
    return re.sub(r"\$\{([^}]+)\}", lambda m: str(_lookup(params, m.group(1).strip())), text)


def _lookup(params: dict, dotted: str) -> Any:
    value: Any = params
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise PipelineError(f"dvc.yaml names the param {dotted}, which params.yaml lacks; add it")
        value = value[part]
    return value


def _content_hash(path: Path) -> str:
    """sha256 of a file, or of a folder's files with their relative paths (bytecode caches skipped)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if any(part == _IGNORED[0] for part in file.parts) or file.suffix == _IGNORED[1]:
            continue
        digest.update(file.relative_to(path).as_posix().encode() if file != path else b"")
        digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()


def _stage_spec(stage: str, pipeline_file: Path) -> dict:
    try:
        return yaml.safe_load(pipeline_file.read_text())["stages"][stage]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise PipelineError(
            f"{pipeline_file}: no readable stage {stage!r} ({exc}); restore dvc.yaml from git"
        ) from None


def stage_inputs(stage: str, params: dict, pipeline_file: Path | None = None) -> dict[str, str]:
    """Every dep of ``stage`` as ``dvc.yaml`` lists it, with its content's hash (``missing`` where absent).

    A dep is read from the workspace the stage runs in (the repository, or the copy ``dvc exp run
    --queue`` runs in); one that is not there — the sources, when a stage script runs in a folder of
    its own outside the repository — from the repository the running code belongs to."""
    pipeline_file = pipeline_file or CODE_ROOT / "dvc.yaml"
    inputs = {}
    for entry in _stage_spec(stage, pipeline_file).get("deps", []):
        name = _interpolate(entry if isinstance(entry, str) else next(iter(entry)), params)
        path = next((p for p in (Path(name), pipeline_file.parent / name) if p.exists()), None)
        inputs[name] = _content_hash(path) if path is not None else "missing"
    return inputs


def stage_fingerprint(stage: str, params: dict, pipeline_file: Path | None = None) -> str:
    """What DVC keys ``stage`` on, as one hash: its deps' content and the values of the params ``dvc.yaml``
    names for it (``params``: the whole validated ``params.yaml`` as a dict)."""
    pipeline_file = pipeline_file or CODE_ROOT / "dvc.yaml"
    names = [p if isinstance(p, str) else next(iter(p)) for p in _stage_spec(stage, pipeline_file).get("params", [])]
    return fingerprint(stage_inputs(stage, params, pipeline_file), {name: _lookup(params, name) for name in names})


def save_checkpoint(path: Path, state: dict) -> None:
    with atomic_file(path) as tmp:
        torch.save({"format": FORMAT_VERSION, **state}, tmp)


def discard_checkpoint(path: Path) -> None:
    """The stage completed: its checkpoint must not be found by a later run (which would "resume" into a
    finished model instead of computing)."""
    Path(path).unlink(missing_ok=True)


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
        print(f"note: {path} was written for other inputs (code, data or params); starting from scratch")
        return None
    return state
