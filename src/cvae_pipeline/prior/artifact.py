"""The fitted latent prior as a file (``models/prior.pt``), and the samplers it provides.

One file for every ``prior.kind``, tensors and plain containers only (``torch.load(weights_only=True)``):
the kind, the checksum of the ``models/model.pt`` whose latents it was fitted on, and the density —
a per-class GMM, or a denoiser's weights (the EMA's) with its architecture and the standardisation of
the latents. ``kind: none`` is a file too, so DVC has an output and ``sample`` can say why there is no
fitted density instead of failing on a missing file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import PipelineError, reading
from ..io import atomic_file
from .diffusion import Denoiser, GaussianDiffusion, build_denoiser, describe_denoiser
from .gmm import ClassGMM

FORMAT_VERSION = 1
#: how a run's description names each ``sample.solver``
SOLVER_NAMES = {"ddim": "DDIM", "dpmpp_2m": "DPM-Solver++(2M)"}


@dataclass
class DiffusionPrior:
    """A trained denoiser over standardised latents: z = mean + scale * x."""

    denoiser: Denoiser
    diffusion: GaussianDiffusion
    mean: torch.Tensor  # [D]
    scale: torch.Tensor  # [D]

    def sampler(self, steps: int, guidance: float, solver: str = "ddim") -> DiffusionSampler:
        return DiffusionSampler(self, steps, guidance, solver)

    def describe(self, steps: int, guidance: float, solver: str = "ddim") -> str:
        return (
            f"diffusion prior ({describe_denoiser(self.denoiser)}, {self.diffusion.prediction}-prediction; "
            f"{steps} {SOLVER_NAMES[solver]} steps, guidance {guidance:g})"
        )

    def to(self, device) -> DiffusionPrior:
        self.denoiser.to(device)
        self.mean, self.scale = self.mean.to(device), self.scale.to(device)
        return self


@dataclass
class DiffusionSampler:
    """A ``LatentSampler`` (``models.base``): what ``BaseCVAE.sample(latents=...)`` draws z from."""

    prior: DiffusionPrior
    steps: int
    guidance: float
    solver: str = "ddim"

    def sample(self, labels: torch.Tensor, temperature: float = 1.0, generator: torch.Generator | None = None):
        p = self.prior
        x = p.diffusion.sample(p.denoiser, labels, self.steps, self.guidance, temperature, generator, self.solver)
        return p.mean.to(x.device) + p.scale.to(x.device) * x


@dataclass
class GMMPrior:
    gmm: ClassGMM

    def sampler(self, steps: int, guidance: float, solver: str = "ddim") -> ClassGMM:
        return self.gmm  # a GMM has no steps, no guidance and no solver

    def describe(self, steps: int, guidance: float, solver: str = "ddim") -> str:
        return f"ex-post GMM ({self.gmm.weights.shape[1]} per class)"

    def to(self, device) -> GMMPrior:
        return self


FittedPrior = DiffusionPrior | GMMPrior


def save_prior(path: Path, kind: str, model_sha256: str, classes: list[str], prior: FittedPrior | None) -> None:
    state: dict = {"format": FORMAT_VERSION, "kind": kind, "model_sha256": model_sha256, "classes": list(classes)}
    if isinstance(prior, GMMPrior):
        g = prior.gmm
        state["gmm"] = {"weights": g.weights, "means": g.means, "covariances": g.covariances}
    elif isinstance(prior, DiffusionPrior):
        d = prior.denoiser
        state["diffusion"] = {
            "architecture": d.architecture,
            "shape": list(d.shape),
            "dim": d.dim,
            "num_classes": d.num_classes,
            "width": d.width,
            "blocks": len(d.blocks),
            "timesteps": prior.diffusion.timesteps,
            "prediction": prior.diffusion.prediction,
            "state_dict": {k: v.detach().cpu() for k, v in d.state_dict().items()},
            "mean": prior.mean.cpu(),
            "scale": prior.scale.cpu(),
        }
    with atomic_file(path) as tmp:
        torch.save(state, tmp)


def load_prior(path: Path, model_sha256: str | None = None) -> tuple[str, FittedPrior | None]:
    """(kind, the prior or None for ``kind: none``); one-line errors for a missing, damaged or stale file.

    ``model_sha256``: the checksum of the model about to decode its latents; a prior fitted on
    another model's latents is refused (its z would mean nothing to this decoder)."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: fitted prior missing; run `dvc repro prior`")
    with reading(path, "prior"):  # truncated, garbled, not a torch file, or not ours
        state = torch.load(path, map_location="cpu", weights_only=True)
        kind = state["kind"]
        if kind == "gmm":
            g = state["gmm"]
            prior: FittedPrior | None = GMMPrior(ClassGMM(g["weights"], g["means"], g["covariances"]))
        elif kind == "diffusion":
            d = state["diffusion"]
            # files written before the conv denoiser have neither key: they hold an MLP over flat latents
            architecture, shape = d.get("architecture", "mlp"), tuple(d.get("shape", [d["dim"]]))
            denoiser = build_denoiser(architecture, shape, d["num_classes"], d["width"], d["blocks"])
            denoiser.load_state_dict(d["state_dict"])
            prior = DiffusionPrior(
                denoiser.eval(), GaussianDiffusion(d["timesteps"], d["prediction"]), d["mean"], d["scale"]
            )
        elif kind == "none":
            prior = None
        else:
            raise ValueError(f"unknown kind {kind!r}")
    if model_sha256 is not None and state.get("model_sha256") != model_sha256:
        raise PipelineError(
            f"{path} was fitted on the latents of another trained model; re-fit it with `dvc repro prior`"
        )
    return kind, prior
