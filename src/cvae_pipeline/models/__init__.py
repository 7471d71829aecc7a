"""CVAE models, registered by name so that ``params.yaml: model.backbone`` picks one."""

from __future__ import annotations

from collections.abc import Callable

from .base import BaseCVAE, ELBOTerms
from .conv import ConvCVAE
from .flows import FlowPrior, PosteriorFlow
from .likelihoods import build_likelihood
from .mlp import MLPCVAE
from .resnet import ResNetCVAE

#: backbone name -> class; the single place a new backbone is registered.
BACKBONES: dict[str, Callable[..., BaseCVAE]] = {
    "mlp": MLPCVAE,
    "conv": ConvCVAE,
    "resnet": ResNetCVAE,
}


def build_model(cfg, num_classes: int) -> BaseCVAE:
    """Instantiate the model that ``cfg`` (a validated ``ModelParams``) describes."""
    likelihood = build_likelihood(cfg.likelihood, cfg.gaussian_variance, cfg.gaussian_std, cfg.mixtures)
    flow = cfg.flow
    kwargs = dict(width=cfg.width, conditioning=cfg.conditioning)
    if flow.posterior != "none":  # the encoder emits a context as wide as z for the flow to read
        kwargs["posterior_flow"] = PosteriorFlow(
            flow.posterior, flow.steps, cfg.latent_dim, cfg.latent_dim, flow.hidden
        )
    if cfg.prior == "flow":
        kwargs["prior"] = FlowPrior(cfg.latent_dim, num_classes, flow.prior_steps, flow.hidden)
    if cfg.backbone == "resnet":
        kwargs["blocks"] = cfg.blocks
        kwargs["latent_resolution"] = cfg.latent_resolution
    return BACKBONES[cfg.backbone](num_classes, cfg.latent_dim, likelihood, **kwargs)


__all__ = ["BACKBONES", "BaseCVAE", "ELBOTerms", "build_model"]
