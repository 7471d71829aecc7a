"""Decoder likelihoods p(x | z, y) over images scaled to [0, 1].

A likelihood turns the decoder's raw output into a per-image negative
log-likelihood (summed over pixels, in nats) and into the image the model
"means" (``mean``) or a draw from it (``sample``). The decoder asks it how many
output channels it needs (``out_channels``), so every backbone works with every likelihood.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class Likelihood(nn.Module):
    """Interface: ``out_channels``, ``nll(out, x)``, ``mean(out)``, ``sample(out, generator)``."""

    name: str = ""
    #: decoder output channels per pixel
    out_channels: int = 3
    #: True when ``nll`` is a probability of the 8-bit image (so bits/dim is honest).
    discrete: bool = False

    def nll(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        """Negative log-likelihood per image, [B], summed over all pixels and channels."""
        raise NotImplementedError

    def mean(self, out: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        """The decoder's expected image in [0, 1], [B, 3, H, W]."""
        raise NotImplementedError

    def sample(self, out: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:  # pragma: no cover
        """A draw x ~ p(x | z, y) in [0, 1], [B, 3, H, W]."""
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

    def sample(self, out: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.bernoulli(torch.sigmoid(out), generator=generator)


class Gaussian(Likelihood):
    """Gaussian with mean ``sigmoid(out)`` and a fixed, learned or per-pixel std.

    ``learned`` (one std per colour channel) is the σ-VAE of Rybkin et al. (2021): the model
    finds the reconstruction/KL balance itself instead of through a hand-tuned beta.
    ``pixel``: the decoder outputs a log-std for every pixel and channel too (heteroscedastic),
    starting at ``fixed_std``. A density of continuous pixels, so no bits/dim (see ``discrete``).
    """

    name = "gaussian"

    def __init__(self, variance: str = "learned", fixed_std: float = 0.1, min_log_std: float = -7.0):
        super().__init__()
        if variance not in ("fixed", "learned", "pixel"):
            raise ValueError(f"variance must be 'fixed', 'learned' or 'pixel', got {variance!r}")
        self.variance = variance
        self.min_log_std = min_log_std
        self.out_channels = 6 if variance == "pixel" else 3
        log_std = torch.full((1, 3, 1, 1), math.log(fixed_std))
        if variance == "learned":
            self.log_std = nn.Parameter(log_std)
        else:  # fixed: the std; pixel: the offset the decoder's log-std output starts from
            self.register_buffer("log_std", log_std)

    def _mean_log_std(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.variance == "pixel":
            logits, raw = out.chunk(2, dim=1)
            return torch.sigmoid(logits), (raw + self.log_std).clamp(min=self.min_log_std)
        return torch.sigmoid(out), self.log_std.clamp(min=self.min_log_std)

    def nll(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        mean, log_std = self._mean_log_std(out)
        z = (x - mean) * torch.exp(-log_std)
        per_pixel = 0.5 * z.pow(2) + log_std + HALF_LOG_2PI
        return per_pixel.flatten(1).sum(1)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return self._mean_log_std(out)[0]

    def sample(self, out: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        mean, log_std = self._mean_log_std(out)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device)
        return (mean + noise * torch.exp(log_std)).clamp(0, 1)


class DiscretizedLogisticMixture(Likelihood):
    """PixelCNN++'s likelihood (Salimans et al. 2017): per pixel, a mixture of ``mixtures``
    logistics over the 256 intensity bins, the green mean linear in red and blue in red and green.

    Each bin gets the logistic CDF mass of [v - 1/255, v + 1/255] in [-1, 1] units, the edge
    bins everything beyond, so ``nll`` is -log P(the 8-bit image): bits/dim are honest.
    Output channels: mixture logits (K), then means, log-scales and the three colour
    coefficients, 3K each.
    """

    name = "logistic_mixture"
    discrete = True
    MIN_LOG_SCALE = -7.0

    def __init__(self, mixtures: int = 10):
        super().__init__()
        self.mixtures = mixtures
        self.out_channels = 10 * mixtures

    def _split(self, out: torch.Tensor):
        k = self.mixtures
        b, _, h, w = out.shape
        logits = out[:, :k]
        means, log_scales, coeffs = out[:, k:].view(b, 3, 3, k, h, w).unbind(1)  # each [B, 3, K, H, W]
        return logits, means, log_scales.clamp(min=self.MIN_LOG_SCALE), torch.tanh(coeffs)

    @staticmethod
    def _coupled_means(means: torch.Tensor, coeffs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Means of (r, g, b) given the pixel's previous channels x ([B, 3, 1, H, W], in [-1, 1])."""
        r, g, b = means.unbind(1)
        g = g + coeffs[:, 0] * x[:, 0]
        b = b + coeffs[:, 1] * x[:, 0] + coeffs[:, 2] * x[:, 1]
        return torch.stack([r, g, b], dim=1)

    def log_prob_pixels(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log P(pixel) for x in [0, 1] on the 8-bit grid, [B, H, W]."""
        logits, means, log_scales, coeffs = self._split(out)
        x = (x * 2 - 1).unsqueeze(2)  # [B, 3, 1, H, W] in [-1, 1]
        centred = x - self._coupled_means(means, coeffs, x)
        inv_scale = torch.exp(-log_scales)
        plus = inv_scale * (centred + 1 / 255)
        minus = inv_scale * (centred - 1 / 255)
        log_cdf_plus = F.logsigmoid(plus)  # the 0 bin: everything below its upper edge
        log_one_minus_cdf_minus = -F.softplus(minus)  # the 255 bin: everything above its lower edge
        cdf_delta = torch.sigmoid(plus) - torch.sigmoid(minus)
        mid = inv_scale * centred
        log_pdf_mid = mid - log_scales - 2 * F.softplus(mid)  # tiny bins: density x bin width
        log_delta = torch.where(cdf_delta > 1e-5, torch.log(cdf_delta.clamp(min=1e-12)), log_pdf_mid - math.log(127.5))
        log_probs = torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_minus, log_delta))
        return torch.logsumexp(log_probs.sum(1) + F.log_softmax(logits, dim=1), dim=1)

    def nll(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        x = (x * 255).round() / 255  # the 8-bit grid the probabilities are of
        return -self.log_prob_pixels(out, x).flatten(1).sum(1)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """The mixture's expected pixel (of the continuous logistics; edge bins ignored)."""
        logits, means, _, coeffs = self._split(out)
        r, g, b = means.unbind(1)
        g = g + coeffs[:, 0] * r
        b = b + coeffs[:, 1] * r + coeffs[:, 2] * g
        weights = torch.softmax(logits, dim=1)
        expected = (torch.stack([r, g, b], dim=1) * weights.unsqueeze(1)).sum(2)
        return ((expected + 1) / 2).clamp(0, 1)

    def sample(self, out: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        logits, means, log_scales, coeffs = self._split(out)
        b, k, h, w = logits.shape
        probs = torch.softmax(logits, dim=1).permute(0, 2, 3, 1).reshape(-1, k)
        chosen = torch.multinomial(probs, 1, generator=generator).view(b, h, w)
        pick = F.one_hot(chosen, k).permute(0, 3, 1, 2).unsqueeze(1).to(means.dtype)  # [B, 1, K, H, W]
        means, log_scales, coeffs = ((t * pick).sum(2) for t in (means, log_scales, coeffs))  # [B, 3, H, W]
        u = torch.rand(means.shape, generator=generator, device=means.device).clamp(1e-5, 1 - 1e-5)
        noise = torch.exp(log_scales) * (torch.log(u) - torch.log1p(-u))
        r = (means[:, 0] + noise[:, 0]).clamp(-1, 1)
        g = (means[:, 1] + coeffs[:, 0] * r + noise[:, 1]).clamp(-1, 1)
        bl = (means[:, 2] + coeffs[:, 1] * r + coeffs[:, 2] * g + noise[:, 2]).clamp(-1, 1)
        return (torch.stack([r, g, bl], dim=1) + 1) / 2


def build_likelihood(
    name: str, gaussian_variance: str = "learned", gaussian_std: float = 0.1, mixtures: int = 10
) -> Likelihood:
    if name == "bernoulli":
        return Bernoulli()
    if name == "gaussian":
        return Gaussian(gaussian_variance, gaussian_std)
    if name == "logistic_mixture":
        return DiscretizedLogisticMixture(mixtures)
    raise ValueError(f"unknown likelihood {name!r}; expected bernoulli, gaussian or logistic_mixture")
