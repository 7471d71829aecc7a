"""The one interface every CVAE implements (in the spirit of PyTorch-VAE's ``BaseVAE``).

A backbone provides ``encode(x, y) -> Posterior(mu, logvar, context)`` and
``decode(z, y) -> raw decoder output``; everything else — the reparameterisation,
the posterior flow, the prior, the ELBO terms with KL warm-up and free bits,
sampling and reconstruction — is shared here so that backbones differ only in
their networks and stay comparable.

With the standard-normal prior and no posterior flow the KL is analytic; a posterior
flow or a flow prior make it a one-sample Monte-Carlo estimate,
log q(z_K | x, y) - log p(z_K | y), whose expectation is the same KL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch
from torch import nn

from .flows import PosteriorFlow, StandardNormalPrior
from .likelihoods import HALF_LOG_2PI, Likelihood

IMAGE_SHAPE = (3, 32, 32)
IMAGE_DIM = 3 * 32 * 32
IMAGE_PIXELS = 32 * 32


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


class Posterior(NamedTuple):
    """The encoder's output: the base Gaussian N(mu, exp(logvar)) and the context a posterior flow reads."""

    mu: torch.Tensor
    logvar: torch.Tensor
    context: torch.Tensor | None = None


class LatentSampler(Protocol):
    """Anything that draws latents for labels: the model's prior, or a fitted prior (``cvae_pipeline.prior``)."""

    def sample(
        self, labels: torch.Tensor, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> torch.Tensor: ...


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per latent dimension, [B, D]."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


class BaseCVAE(nn.Module):
    """Class-conditional VAE: q(z|x,y) (optionally through a posterior flow), p(z|y), p(x|z,y)."""

    def __init__(
        self,
        num_classes: int,
        latent_dim: int,
        likelihood: Likelihood,
        posterior_flow: PosteriorFlow | None = None,
        prior: StandardNormalPrior | None = None,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.latent_dim = latent_dim
        #: z's layout: (latent_dim,) flat, or (C, H, W) for a latent map (the flat z is its channel-major view)
        self.latent_shape: tuple[int, ...] = (latent_dim,)
        self.likelihood = likelihood
        self.posterior_flow = posterior_flow
        self.prior = prior if prior is not None else StandardNormalPrior(latent_dim)
        #: width of the context the encoder emits for the posterior flow (0 without one)
        self.context_dim = posterior_flow.context_dim if posterior_flow is not None else 0

    # --- what a backbone implements ------------------------------------------------
    def encode(self, x: torch.Tensor, y: torch.Tensor) -> Posterior:
        """x in [0, 1], [B, 3, 32, 32]; y int64 [B] -> Posterior (mu, logvar [B, latent_dim], context)."""
        raise NotImplementedError

    def decode(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """z [B, latent_dim], y [B] -> raw output [B, likelihood.out_channels, 32, 32]."""
        raise NotImplementedError

    # --- shared ----------------------------------------------------------------------
    @property
    def decoder_channels(self) -> int:
        return self.likelihood.out_channels

    @property
    def encoder_outputs(self) -> int:
        """Width of a backbone's final encoder layer: mu, logvar and the flow context."""
        return 2 * self.latent_dim + self.context_dim

    def posterior_from(self, h: torch.Tensor) -> Posterior:
        """Split a backbone's final encoder layer into mu, logvar and the flow context."""
        mu, logvar, context = h.split([self.latent_dim, self.latent_dim, self.context_dim], dim=1)
        return Posterior(mu, logvar, context if self.context_dim else None)

    @property
    def analytic_kl(self) -> bool:
        return self.posterior_flow is None and type(self.prior) is StandardNormalPrior

    def draw_latent(self, posterior: Posterior) -> tuple[torch.Tensor, torch.Tensor]:
        """z ~ q(z|x,y) by reparameterisation (then through the flow) and log q(z|x,y), [B]."""
        eps = torch.randn_like(posterior.mu)
        z = posterior.mu + eps * torch.exp(0.5 * posterior.logvar)
        log_q = (-0.5 * eps.pow(2) - 0.5 * posterior.logvar - HALF_LOG_2PI).sum(1)
        if self.posterior_flow is not None:
            z, log_det = self.posterior_flow(z, posterior.context)
            log_q = log_q - log_det
        return z, log_q

    def forward(self, x: torch.Tensor, y: torch.Tensor):
        """(decoder output, KL per image [B], KL per latent dim [B, D] or None when Monte-Carlo).

        Everything the loss sums is fp32: under bf16 autocast (``cvae_pipeline.precision``) the networks'
        outputs are cast back before the KL and the likelihood."""
        posterior = Posterior(*(None if t is None else t.float() for t in self.encode(x, y)))
        z, log_q = self.draw_latent(posterior)
        z, log_q = z.float(), log_q.float()
        if self.analytic_kl:
            kl_per_dim = gaussian_kl(posterior.mu, posterior.logvar)
            kl = kl_per_dim.sum(1)
        else:
            kl_per_dim, kl = None, log_q - self.prior.log_prob(z, y).float()
        return self.decode(z, y).float(), kl, kl_per_dim

    def loss(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        beta: float = 1.0,
        free_bits: float = 0.0,
        forward: torch.nn.Module | None = None,
    ) -> ELBOTerms:
        """ELBO terms for a batch; ``free_bits`` (nats per latent dim, batch-averaged as in
        Kingma et al. 2016) keeps the optimiser from collapsing dimensions early — per dimension
        with the analytic KL, on the total (latent_dim x free_bits) with a Monte-Carlo KL, which
        has no per-dimension split. ``forward``: the module to run instead of ``self`` (a
        DistributedDataParallel wrapper of it)."""
        out, kl, kl_per_dim = (forward or self)(x, y)
        nll = self.likelihood.nll(out, x)
        kl_for_loss = kl.mean()
        if free_bits > 0:
            if kl_per_dim is not None:
                kl_for_loss = kl_per_dim.mean(0).clamp(min=free_bits).sum()
            else:
                kl_for_loss = kl_for_loss.clamp(min=free_bits * self.latent_dim)
        loss = nll.mean() + beta * kl_for_loss
        return ELBOTerms(loss=loss, nll=nll.mean(), kl=kl.mean())

    def log_importance_weights(self, x: torch.Tensor, y: torch.Tensor, samples: int) -> torch.Tensor:
        """log p(x|z,y) + log p(z|y) - log q(z|x,y) for ``samples`` draws z ~ q, [samples, B].

        Its mean over draws is the ELBO; ``logsumexp - log(samples)`` is the
        importance-weighted bound of Burda et al. (2016).
        """
        posterior = self.encode(x, y)
        out = []
        for _ in range(samples):
            z, log_q = self.draw_latent(posterior)
            out.append(-self.likelihood.nll(self.decode(z, y), x) + self.prior.log_prob(z, y) - log_q)
        return torch.stack(out)

    @torch.no_grad()
    def sample(
        self,
        labels: torch.Tensor,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        latents: LatentSampler | None = None,
        decoder_output: str = "mean",
    ) -> torch.Tensor:
        """Images in [0, 1] for the given class labels.

        z comes from the prior at ``temperature`` (its base distribution's std), or from
        ``latents`` (a fitted prior's sampler); the image is the decoder's mean (``decoder_output="mean"``,
        the default: what VAE papers show) or a draw from the likelihood (``"sample"``).
        """
        if decoder_output not in ("mean", "sample"):
            raise ValueError(f"decoder_output must be 'mean' or 'sample', got {decoder_output!r}")
        labels = labels.to(self._device()).long()
        z = (latents or self.prior).sample(labels, temperature, generator).float()
        out = self.decode(z, labels).float()
        images = self.likelihood.sample(out, generator) if decoder_output == "sample" else self.likelihood.mean(out)
        return images.clamp(0, 1)

    @torch.no_grad()
    def encode_latents(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The posterior's central latent: mu, through the flow when there is one."""
        posterior = self.encode(x, y)
        if self.posterior_flow is None:
            return posterior.mu
        return self.posterior_flow(posterior.mu, posterior.context)[0]

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.likelihood.mean(self.decode(self.encode_latents(x, y).float(), y).float()).clamp(0, 1)

    def _device(self) -> torch.device:
        return next(self.parameters()).device
