"""The trained model as a file (``models/model.pt``); ``serving.py`` makes it an MLflow model.

The file holds the validated model params, the class names and the weights —
tensors and plain containers only, so it loads with ``weights_only=True`` and
any later stage (sampling, evaluation) rebuilds the exact model from it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import PipelineError, reading
from ..io import atomic_file
from .base import BaseCVAE


def save_trained_model(
    path: Path, model: BaseCVAE, model_params: dict, classes: list[str], refined_from: str | None = None
) -> None:
    """``refined_from``: the SHA-256 of the model file whose decoder this one's is a refinement of (its
    encoder, and so the prior fitted on its latents, are that model's)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    saved = {"model_params": model_params, "classes": list(classes), "state_dict": state}
    if refined_from is not None:
        saved["refined_from"] = refined_from
    with atomic_file(path) as tmp:
        torch.save(saved, tmp)


def refined_from(path: Path) -> str | None:
    """The SHA-256 :func:`save_trained_model` recorded as this model's origin; None for a trained model."""
    with reading(Path(path), "refine"):
        return torch.load(path, map_location="cpu", weights_only=True).get("refined_from")


def load_trained_model(path: Path, device: torch.device | str = "cpu") -> tuple[BaseCVAE, list[str]]:
    from pydantic import ValidationError

    from ..config import ModelParams
    from ..errors import format_validation_error
    from . import build_model

    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: trained model missing; run `dvc repro train` first")
    with reading(path, "train"):  # truncated, garbled, not a torch file, or not ours
        saved = torch.load(path, map_location="cpu", weights_only=True)
        classes, state, model_params = saved["classes"], saved["state_dict"], saved["model_params"]
    try:
        # every key comes from the file: the params it was trained with, never today's defaults
        params = ModelParams.model_validate(model_params)
    except ValidationError as exc:
        problems = format_validation_error(exc, str(path), ModelParams).replace("\n", "; ")
        raise PipelineError(
            f"{problems} (a model saved by another version; re-train it: `dvc repro -f train`)"
        ) from None
    model = build_model(params, len(classes))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise PipelineError(
            f"{path}: weights do not fit its model params ({str(exc).splitlines()[0][:160]}); "
            "re-create it with `dvc repro -f train`"
        ) from None
    return model.to(device).eval(), classes
