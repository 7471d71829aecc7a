"""The model ``sample`` and ``evaluate`` decode with (``models/refined.pt``), checked against the model
the prior was fitted on."""

from __future__ import annotations

import torch

from ..data.sources import file_checksum
from ..errors import PipelineError
from ..models import BaseCVAE
from ..models.artifact import load_trained_model, refined_from
from ..paths import MODEL_FILE, REFINED_MODEL_FILE


def load_decoding_model(device: torch.device | str = "cpu") -> tuple[BaseCVAE, list[str], str]:
    """(``models/refined.pt``, its classes, the SHA-256 of ``models/model.pt``).

    The refined file is ``models/model.pt`` itself (refine off) or a refinement of its decoder; either
    way its encoder is that model's, so a prior fitted on ``models/model.pt``'s latents (checked by that
    checksum) fits it. A refined file of another model is refused: its decoder was tuned to other latents."""
    for path, stage in ((MODEL_FILE, "train"), (REFINED_MODEL_FILE, "refine")):
        if not path.is_file():
            raise PipelineError(f"{path}: missing; run `dvc repro {stage}` first")
    base = file_checksum(MODEL_FILE, "sha256")
    origin = refined_from(REFINED_MODEL_FILE) or file_checksum(REFINED_MODEL_FILE, "sha256")
    if origin != base:
        raise PipelineError(
            f"{REFINED_MODEL_FILE} was made from another {MODEL_FILE} than the one here; re-create it with "
            "`dvc repro refine`"
        )
    model, classes = load_trained_model(REFINED_MODEL_FILE, device)
    return model, classes, base
