"""The trained model as a file (``models/model.pt``); ``serving.py`` makes it an MLflow model.

The file holds the validated model params, the class names and the weights —
tensors and plain containers only, so it loads with ``weights_only=True`` and
any later stage (sampling, evaluation) rebuilds the exact model from it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import PipelineError
from ..io import atomic_file
from .base import BaseCVAE


def save_trained_model(path: Path, model: BaseCVAE, model_params: dict, classes: list[str]) -> None:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with atomic_file(path) as tmp:
        torch.save({"model_params": model_params, "classes": list(classes), "state_dict": state}, tmp)


def load_trained_model(path: Path, device: torch.device | str = "cpu") -> tuple[BaseCVAE, list[str]]:
    from ..config import ModelParams
    from . import build_model

    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: trained model missing; run `dvc repro train` first")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    model = build_model(ModelParams(**saved["model_params"]), len(saved["classes"]))
    model.load_state_dict(saved["state_dict"])
    return model.to(device).eval(), saved["classes"]
