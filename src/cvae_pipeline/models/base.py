"""The one interface every CVAE implements (in the spirit of PyTorch-VAE's ``BaseVAE``).

A backbone provides ``encode(x, y) -> (mu, logvar)`` and ``decode(z, y) -> raw
decoder output``; everything else — the reparameterisation, the ELBO terms
with KL warm-up and free bits, sampling and reconstruction — is shared here so
that backbones differ only in their networks and stay comparable.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .likelihoods import HALF_LOG_2PI, Likelihood

IMAGE_SHAPE = (3, 32, 32)
IMAGE_DIM = 3 * 32 * 32


@dataclass
class ELBOTerms:
    """Per-batch means. ``loss`` is what the optimiser minimises (beta-weighted,
    free bits applied); ``nll + kl`` is the honest negative ELBO per image."""

    loss: torch.Tensor
    nll: torch.Tensor
    kl: torch.Tensor

    @property
    def neg_elbo(self) -> torch.Tensor:
        return self.nll + self.kl


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per latent dimension, [B, D]."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


class BaseCVAE(nn.Module):
    """Class-conditional VAE with a standard-normal prior p(z)."""

    def __init__(self, num_classes: int, latent_dim: int, likelihood: Likelihood):
        super().__init__()
        self.num_classes = num_classes
        self.latent_dim = latent_dim
        self.likelihood = likelihood

    # --- what a backbone implements ------------------------------------------------
    def encode(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x in [0, 1], [B, 3, 32, 32]; y int64 [B] -> (mu, logvar), each [B, latent_dim]."""
        raise NotImplementedError

    def decode(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """z [B, latent_dim], y [B] -> raw output [B, 3 * channels_per_colour, 32, 32]."""
        raise NotImplementedError

    # --- shared ----------------------------------------------------------------------
    @property
    def decoder_channels(self) -> int:
        return 3 * self.likelihood.channels_per_colour

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)

    def forward(self, x: torch.Tensor, y: torch.Tensor):
        mu, logvar = self.encode(x, y)
        z = self.reparameterize(mu, logvar)
        return self.decode(z, y), mu, logvar

    def loss(self, x: torch.Tensor, y: torch.Tensor, beta: float = 1.0, free_bits: float = 0.0,
             forward: torch.nn.Module | None = None) -> ELBOTerms:
        """ELBO terms for a batch; ``free_bits`` (nats per latent dim, batch-averaged as in
        Kingma et al. 2016) keeps the optimiser from collapsing dimensions early. ``forward``:
        the module to run instead of ``self`` (a DistributedDataParallel wrapper of it)."""
        out, mu, logvar = (forward or self)(x, y)
        nll = self.likelihood.nll(out, x)
        kl_per_dim = gaussian_kl(mu, logvar)
        kl = kl_per_dim.sum(1)
        kl_for_loss = kl.mean()
        if free_bits > 0:
            kl_for_loss = kl_per_dim.mean(0).clamp(min=free_bits).sum()
        loss = nll.mean() + beta * kl_for_loss
        return ELBOTerms(loss=loss, nll=nll.mean(), kl=kl.mean())

    def log_importance_weights(self, x: torch.Tensor, y: torch.Tensor, samples: int) -> torch.Tensor:
        """log p(x|z,y) + log p(z) - log q(z|x,y) for ``samples`` draws z ~ q, [samples, B].

        Its mean over draws is the ELBO; ``logsumexp - log(samples)`` is the
        importance-weighted bound of Burda et al. (2016).
        """
        mu, logvar = self.encode(x, y)
        std = torch.exp(0.5 * logvar)
        out = []
        for _ in range(samples):
            eps = torch.randn_like(mu)
            z = mu + eps * std
            log_q = (-0.5 * eps.pow(2) - 0.5 * logvar - HALF_LOG_2PI).sum(1)
            log_p_z = (-0.5 * z.pow(2) - HALF_LOG_2PI).sum(1)
            out.append(-self.likelihood.nll(self.decode(z, y), x) + log_p_z - log_q)
        return torch.stack(out)

    @torch.no_grad()
    def sample(
        self, labels: torch.Tensor, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Images in [0, 1] for the given class labels: z ~ N(0, temperature^2 I), decoder mean."""
        labels = labels.to(self._device()).long()
        z = torch.randn(len(labels), self.latent_dim, generator=generator, device=self._device()) * temperature
        return self.likelihood.mean(self.decode(z, labels)).clamp(0, 1)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        mu, _ = self.encode(x, y)
        return self.likelihood.mean(self.decode(mu, y)).clamp(0, 1)

    def _device(self) -> torch.device:
        return next(self.parameters()).device
