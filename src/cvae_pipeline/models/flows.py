"""Normalizing flows on the latent space: posterior flows q(z|x,y) and a class-conditional flow prior p(z|y).

Every transform returns ``(z', log|det dz'/dz|)`` per example, so the ELBO can carry the
change of volume: log q(z_K|x) = log N(z_0; mu, sigma) - sum_k log|det J_k|, and the KL term
becomes the Monte-Carlo estimate log q(z_K|x) - log p(z_K|y) (Rezende & Mohamed 2015).

* ``PlanarStep`` — Rezende & Mohamed (2015): z + u tanh(w.z + b), its (u, w, b) produced from
  the encoder's context (amortized, as in van den Berg et al. 2018), u constrained so the step
  stays invertible. No closed-form inverse.
* ``IAFStep`` — Kingma et al. (2016): a MADE network reads (z, context) and gives an
  autoregressive shift m and gate sigma; z' = sigma * z + (1 - sigma) * m (their numerically
  stable form), log-det = sum log sigma. Inverse by D fixed-point passes (only tests need it).
* ``AffineCoupling`` / ``FlowPrior`` — RealNVP (Dinh et al. 2017) couplings conditioned on a class
  embedding: closed-form in both directions, so the prior has an exact density for the ELBO
  and draws samples in one pass.

torch has no trainable flows of these kinds (``torch.distributions`` transforms are fixed
bijections), and pyro/nflows would add a heavy dependency for ~150 lines; hence hand-written,
with the log-determinants tested against autograd's Jacobian.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .likelihoods import HALF_LOG_2PI


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over the last dimension, [B]."""
    return (-0.5 * z.pow(2) - HALF_LOG_2PI).sum(-1)


class PlanarStep(nn.Module):
    """z' = z + u_hat * tanh(w.z + b) with (u, w, b) read from the context."""

    def __init__(self, dim: int, context_dim: int):
        super().__init__()
        self.dim = dim
        self.params = nn.Linear(context_dim, 2 * dim + 1)
        nn.init.normal_(self.params.weight, std=0.01)
        nn.init.zeros_(self.params.bias)

    def forward(self, z: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u, w, b = self.params(context).split([self.dim, self.dim, 1], dim=-1)
        w_dot_u = (w * u).sum(-1, keepdim=True)
        # u_hat makes w.u_hat >= -1, the condition for invertibility (Rezende & Mohamed, appendix A.1)
        u_hat = u + (F.softplus(w_dot_u) - 1 - w_dot_u) * w / (w.pow(2).sum(-1, keepdim=True) + 1e-8)
        activation = torch.tanh((w * z).sum(-1, keepdim=True) + b)
        psi = (1 - activation.pow(2)) * w
        log_det = torch.log((1 + (psi * u_hat).sum(-1)).abs() + 1e-8)
        return z + u_hat * activation, log_det


class MaskedLinear(nn.Linear):
    def __init__(self, in_features: int, out_features: int, mask: torch.Tensor):
        super().__init__(in_features, out_features)
        self.register_buffer("mask", mask.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """Autoregressive network (Germain et al. 2015): output i depends on inputs < i only (and on
    the context everywhere). Returns two [B, D] heads, one shift and one gate pre-activation."""

    def __init__(self, dim: int, context_dim: int, hidden: int):
        super().__init__()
        degrees_in = torch.arange(1, dim + 1)
        degrees_hidden = torch.arange(hidden) % max(dim - 1, 1) + 1
        self.inp = MaskedLinear(dim, hidden, degrees_hidden[:, None] >= degrees_in[None, :])
        self.context = nn.Linear(context_dim, hidden)
        self.mid = MaskedLinear(hidden, hidden, degrees_hidden[:, None] >= degrees_hidden[None, :])
        out_mask = degrees_in[:, None] > degrees_hidden[None, :]
        self.out = MaskedLinear(hidden, 2 * dim, torch.cat([out_mask, out_mask]))
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, z: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.elu(self.inp(z) + self.context(context))
        h = F.elu(self.mid(h))
        shift, gate = self.out(h).chunk(2, dim=-1)
        return shift, gate


class IAFStep(nn.Module):
    """One inverse autoregressive flow step, then the dimensions reversed for the next step."""

    #: the gate starts near sigmoid(2) ~ 0.88, close to the identity (Kingma et al. 2016, sec. 4)
    GATE_BIAS = 2.0

    def __init__(self, dim: int, context_dim: int, hidden: int):
        super().__init__()
        self.made = MADE(dim, context_dim, hidden)

    def forward(self, z: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shift, gate = self.made(z, context)
        sigma = torch.sigmoid(gate + self.GATE_BIAS)
        z = sigma * z + (1 - sigma) * shift
        return z.flip(-1), F.logsigmoid(gate + self.GATE_BIAS).sum(-1)

    def inverse(self, z: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Exact after D passes: pass i fixes dimension i, which only depends on dimensions < i."""
        target = z.flip(-1)
        x = torch.zeros_like(target)
        for _ in range(target.shape[-1]):
            shift, gate = self.made(x, context)
            sigma = torch.sigmoid(gate + self.GATE_BIAS)
            x = (target - (1 - sigma) * shift) / sigma
        return x


class PosteriorFlow(nn.Module):
    """K steps applied to the reparameterised z_0 ~ N(mu, sigma^2), conditioned on the encoder's context."""

    def __init__(self, kind: str, steps: int, dim: int, context_dim: int, hidden: int):
        super().__init__()
        if kind == "planar":
            self.steps = nn.ModuleList(PlanarStep(dim, context_dim) for _ in range(steps))
        elif kind == "iaf":
            self.steps = nn.ModuleList(IAFStep(dim, context_dim, hidden) for _ in range(steps))
        else:
            raise ValueError(f"unknown posterior flow {kind!r}; expected planar or iaf")
        #: width of the encoder context the steps read
        self.context_dim = context_dim

    def forward(self, z: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        total = z.new_zeros(z.shape[0])
        for step in self.steps:
            z, log_det = step(z, context)
            total = total + log_det
        return z, total


class AffineCoupling(nn.Module):
    """RealNVP coupling in the normalizing direction z -> u: the dims where ``mask`` is 1 pass
    through and condition an affine map of the others; the class embedding conditions all of it."""

    def __init__(self, dim: int, cond_dim: int, hidden: int, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask.float())
        self.net = nn.Sequential(
            nn.Linear(dim + cond_dim, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, 2 * dim),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def _scale_shift(self, kept: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_scale, shift = self.net(torch.cat([kept, cond], dim=-1)).chunk(2, dim=-1)
        free = 1 - self.mask
        return torch.tanh(log_scale) * free, shift * free  # tanh bounds the scale: stable early training

    def forward(self, z: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_scale, shift = self._scale_shift(z * self.mask, cond)
        return (z - shift) * torch.exp(-log_scale), -log_scale.sum(-1)

    def inverse(self, u: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        log_scale, shift = self._scale_shift(u * self.mask, cond)  # the kept dims are unchanged by forward
        return u * torch.exp(log_scale) + shift


class StandardNormalPrior(nn.Module):
    """p(z|y) = N(0, I) for every class: the classic CVAE's prior."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def log_prob(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return standard_normal_log_prob(z)

    def sample(
        self, labels: torch.Tensor, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        return torch.randn(len(labels), self.dim, generator=generator, device=labels.device) * temperature


class FlowPrior(StandardNormalPrior):
    """Class-conditional RealNVP prior p(z|y): u = f(z; y) ~ N(0, I), trained jointly with the VAE.

    A learned prior can follow the aggregate posterior of each class instead of forcing every
    class into the same ball, which is where a plain VAE's samples fall into 'holes'."""

    def __init__(self, dim: int, num_classes: int, steps: int, hidden: int, embed_dim: int = 32):
        super().__init__(dim)
        self.embed = nn.Embedding(num_classes, embed_dim)
        half = torch.arange(dim) % 2
        self.couplings = nn.ModuleList(
            AffineCoupling(dim, embed_dim, hidden, half if i % 2 == 0 else 1 - half) for i in range(steps)
        )

    def to_base(self, z: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cond = self.embed(y)
        total = z.new_zeros(z.shape[0])
        for coupling in self.couplings:
            z, log_det = coupling(z, cond)
            total = total + log_det
        return z, total

    def log_prob(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        u, log_det = self.to_base(z, y)
        return standard_normal_log_prob(u) + log_det

    def sample(
        self, labels: torch.Tensor, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        u = super().sample(labels, temperature, generator)
        cond = self.embed(labels)
        for coupling in reversed(self.couplings):
            u = coupling.inverse(u, cond)
        return u
