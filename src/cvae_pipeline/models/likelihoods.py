"""Decoder likelihoods p(x | z, y) over images scaled to [0, 1].

A likelihood turns the decoder's raw output into a per-image negative
log-likelihood (summed over pixels, in nats) and into the image the model
"means". The decoder asks it how many output channels it needs per colour
channel, so every backbone works with every likelihood.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class Likelihood(nn.Module):
    """Interface: ``channels_per_colour``, ``nll(out, x)``, ``mean(out)``."""

    name: str = ""
    channels_per_colour: int = 1
    #: True when ``nll`` is a probability of the 8-bit image (so bits/dim is honest).
    discrete: bool = False

    def nll(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        """Negative log-likelihood per image, [B], summed over all pixels and channels."""
        raise NotImplementedError

    def mean(self, out: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        """The decoder's expected image in [0, 1], [B, 3, H, W]."""
        raise NotImplementedError


class Bernoulli(Likelihood):
    """The original write-up's BCE: pixel intensities in [0, 1] as Bernoulli probabilities.

    Not a proper density for continuous pixels (the classic CVAE's known
    compromise), so its NLL is reported in nats, never as bits/dim.
    """

    name = "bernoulli"

    def nll(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(out, x, reduction="none").flatten(1).sum(1)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(out)


class Gaussian(Likelihood):
    """Gaussian with mean ``sigmoid(out)`` and a fixed or learned (global, per colour channel) std.

    A learned variance is the σ-VAE of Rybkin et al. (2021): the model finds the
    reconstruction/KL balance itself instead of through a hand-tuned beta.
    """

    name = "gaussian"

    def __init__(self, variance: str = "learned", fixed_std: float = 0.1, min_log_std: float = -7.0):
        super().__init__()
        if variance not in ("fixed", "learned"):
            raise ValueError(f"variance must be 'fixed' or 'learned', got {variance!r}")
        self.variance = variance
        self.min_log_std = min_log_std
        log_std = torch.full((1, 3, 1, 1), math.log(fixed_std))
        if variance == "learned":
            self.log_std = nn.Parameter(log_std)
        else:
            self.register_buffer("log_std", log_std)

    def nll(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        mean = torch.sigmoid(out)
        log_std = self.log_std.clamp(min=self.min_log_std)
        z = (x - mean) * torch.exp(-log_std)
        per_pixel = 0.5 * z.pow(2) + log_std + HALF_LOG_2PI
        return per_pixel.flatten(1).sum(1)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(out)


def build_likelihood(name: str, gaussian_variance: str = "learned", gaussian_std: float = 0.1) -> Likelihood:
    if name == "bernoulli":
        return Bernoulli()
    if name == "gaussian":
        return Gaussian(gaussian_variance, gaussian_std)
    raise ValueError(f"unknown likelihood {name!r}; expected bernoulli or gaussian")
