"""A class-conditional diffusion model over the VAE's (standardised) latents, and its sampler.

Why a diffusion prior: the decoder of a VAE is usually far better than the samples it is fed, because
the aggregate posterior q(z|y) is not the N(0, I) prior (Wehenkel & Louppe 2021; LSGM, Vahdat et al.
2021). A denoiser over z learns that density as it is. Two denoisers, one interface
(``forward(x_flat, t, y) -> prediction_flat``):

- ``mlp``: the latent as a flat vector, residual MLP blocks conditioned through adaptive LayerNorm (as
  in MAR's ``SimpleMLPAdaLN``, Li et al. 2024). Works for any latent.
- ``conv``: for a latent *map* (``model.latent_resolution`` 4 or 8), 3x3 residual blocks at the map's
  resolution conditioned through adaptive GroupNorm (the ADM/DiT adaLN-Zero recipe on a conv net, as
  latent diffusion's U-Nets do). Why: the map's statistics are alike at every position, and a
  convolution shares what it learns across positions instead of learning each of the 64 anew; the
  same posterior draws then fit far better (see docs/prior.md for the measurements).

- Noise schedule: the cosine schedule of Nichol & Dhariwal (2021), ``timesteps`` discrete steps.
- Target: ``eps`` (the noise) or ``v`` (Salimans & Ho 2022: sqrt(a) eps - sqrt(1-a) x0), whose
  x0 estimate stays finite at the last, almost pure-noise step.
- Class conditioning with a learned null class (index ``num_classes``) dropped in at ``label_dropout``
  during training, so one network is both p(z|y) and p(z): classifier-free guidance (Ho & Salimans
  2022) mixes the two predictions, ``uncond + guidance * (cond - uncond)``. Guidance 1 is the plain
  conditional model, 0 the unconditional one.
- Samplers (``solver``), both deterministic over ``steps`` evenly spaced timesteps, the randomness the
  initial noise only (drawn from the caller's seeded generator, scaled by ``temperature``):
  ``ddim`` (Song et al. 2021, eta 0), a first-order solver of the probability-flow ODE; and
  ``dpmpp_2m``, DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling"), the
  second-order multistep solver in the data (x0) prediction made for guided sampling: it reuses the
  previous step's x0 estimate, so it costs one network call per step as DDIM does and reaches DDIM's
  many-step endpoint in fewer steps. Its first step is DDIM's (the two coincide at first order); so is the
  step into t = 0, whose log-SNR jump is several times the previous one's: extrapolating across it made
  the error 2-6x larger at 10-20 steps on a Gaussian whose ODE is solved exactly (tests/test_solvers.py);
  diffusers' ``lower_order_final`` does the same. The last evaluation, at t = 0, lands on the clean estimate as DDIM's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: the largest beta of the cosine schedule (Nichol & Dhariwal clip at 0.999 so the last step is not singular)
MAX_BETA = 0.999
COSINE_OFFSET = 0.008  # s of the cosine schedule: keeps the first steps' noise from being too small
#: the diffusion prior's samplers (``sample.solver``)
SOLVERS = ("ddim", "dpmpp_2m")
GROUPS = 8  # GroupNorm groups of the conv denoiser (fewer where the channels do not divide)
CONDITION_PER_CHANNEL = 4


def cosine_alpha_bar(timesteps: int) -> torch.Tensor:
    """alpha_bar_t (the signal's share of the variance at step t), t = 0..timesteps-1, float64."""
    steps = torch.arange(timesteps + 1, dtype=torch.float64)
    f = torch.cos((steps / timesteps + COSINE_OFFSET) / (1 + COSINE_OFFSET) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=MAX_BETA)
    return torch.cumprod(1 - betas, dim=0)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of (float) timesteps, [B, dim] (as in DDPM / DiT)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def _zero(*layers: nn.Module) -> None:
    """Zero a layer's weights and bias: a modulation or output that starts at zero (adaLN-Zero)."""
    for layer in layers:
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)


class ConditionedDenoiser(nn.Module):
    """What both denoisers share: the time and class embedding ``condition`` wide, with a learned null class
    (index ``num_classes``) for classifier-free guidance."""

    def __init__(self, num_classes: int, condition: int):
        super().__init__()
        self.num_classes, self.condition = num_classes, condition
        self.time = nn.Sequential(nn.Linear(condition, condition), nn.SiLU(), nn.Linear(condition, condition))
        self.label = nn.Embedding(num_classes + 1, condition)  # the last row is the null class

    @property
    def null_class(self) -> int:
        return self.num_classes

    def embed(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.time(timestep_embedding(t, self.condition)) + self.label(y)


class AdaLNBlock(nn.Module):
    """Residual MLP block whose LayerNorm shift, scale and output gate come from the condition.

    The modulation starts at zero, so every block starts as the identity (DiT's adaLN-Zero)."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))
        _zero(self.modulation[1])

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.modulation(c).chunk(3, dim=1)
        return h + gate * self.mlp(self.norm(h) * (1 + scale) + shift)


class MLPDenoiser(ConditionedDenoiser):
    """MLP over the flat latent, conditioned on time and class through adaptive LayerNorm."""

    architecture = "mlp"

    def __init__(self, dim: int, num_classes: int, width: int, blocks: int):
        super().__init__(num_classes, width)
        self.shape = (dim,)
        self.dim, self.width = dim, width
        self.input = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(AdaLNBlock(width) for _ in range(blocks))
        self.final_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.output = nn.Linear(width, dim)
        _zero(self.final_modulation[1], self.output)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        c = self.embed(t, y)
        h = self.input(x)
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.final_modulation(c).chunk(2, dim=1)
        # fp32 out, also under bf16 autocast: the loss and the sampler's updates are full precision
        return self.output(self.final_norm(h) * (1 + scale) + shift).float()


class AdaGNBlock(nn.Module):
    """Pre-activation residual block of two 3x3 convolutions; the first GroupNorm's shift and scale and the
    output gate come from the condition, zero at the start (adaLN-Zero), so the block starts as the identity."""

    def __init__(self, channels: int, condition: int):
        super().__init__()
        groups = math.gcd(GROUPS, channels)
        self.norm1 = nn.GroupNorm(groups, channels, affine=False, eps=1e-6)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, channels, eps=1e-6)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(condition, 3 * channels))
        _zero(self.modulation[1])

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.modulation(c)[:, :, None, None].chunk(3, dim=1)
        x = self.conv1(F.silu(self.norm1(h) * (1 + scale) + shift))
        x = self.conv2(F.silu(self.norm2(x)))
        return h + gate * x


class ConvDenoiser(ConditionedDenoiser):
    """3x3 residual conv net at the latent map's resolution, conditioned on time and class through adaptive
    GroupNorm. Takes and returns the flat latent (channel-major, as the VAE's decoder reads it)."""

    architecture = "conv"

    def __init__(self, shape: tuple[int, int, int], num_classes: int, width: int, blocks: int):
        # the time/class embedding is 4x the channels wide, as in ADM (Dhariwal & Nichol 2021)
        super().__init__(num_classes, CONDITION_PER_CHANNEL * width)
        self.shape = tuple(shape)
        self.dim, self.width = math.prod(shape), width
        self.input = nn.Conv2d(shape[0], width, 3, padding=1)
        self.blocks = nn.ModuleList(AdaGNBlock(width, self.condition) for _ in range(blocks))
        self.final_norm = nn.GroupNorm(math.gcd(GROUPS, width), width, affine=False, eps=1e-6)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(self.condition, 2 * width))
        self.output = nn.Conv2d(width, shape[0], 3, padding=1)
        _zero(self.final_modulation[1], self.output)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        c = self.embed(t, y)
        h = self.input(x.reshape(-1, *self.shape))
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.final_modulation(c)[:, :, None, None].chunk(2, dim=1)
        out = self.output(F.silu(self.final_norm(h) * (1 + scale) + shift))
        return out.flatten(1).float()  # fp32 out, as the MLP's


Denoiser = MLPDenoiser | ConvDenoiser
ARCHITECTURES = ("mlp", "conv")


def build_denoiser(architecture: str, shape: tuple[int, ...], num_classes: int, width: int, blocks: int) -> Denoiser:
    """The denoiser of ``architecture`` for latents of ``shape`` ((dim,) flat, or (C, H, W) a map)."""
    if architecture == "mlp":
        return MLPDenoiser(math.prod(shape), num_classes, width, blocks)
    if architecture == "conv":
        if len(shape) != 3:
            raise ValueError(f"a conv denoiser needs a latent map (C, H, W), got latent shape {tuple(shape)}")
        return ConvDenoiser(tuple(shape), num_classes, width, blocks)
    raise ValueError(f"unknown denoiser architecture {architecture!r}; expected one of {ARCHITECTURES}")


def describe_denoiser(denoiser: Denoiser) -> str:
    """'MLP 4x512' or 'conv 4x64 on 4x8x8': what a log line or a run's description names."""
    if isinstance(denoiser, ConvDenoiser):
        return f"conv {len(denoiser.blocks)}x{denoiser.width} on {'x'.join(map(str, denoiser.shape))}"
    return f"MLP {len(denoiser.blocks)}x{denoiser.width}"


class GaussianDiffusion:
    """The forward process, the training loss and the samplers (``SOLVERS``) for one ``Denoiser``."""

    def __init__(self, timesteps: int, prediction: str):
        if prediction not in ("eps", "v"):
            raise ValueError(f"prediction must be 'eps' or 'v', got {prediction!r}")
        self.timesteps = timesteps
        self.prediction = prediction
        self.alpha_bar = cosine_alpha_bar(timesteps)

    def _coefficients(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.alpha_bar.to(like.device)[t].to(like.dtype)[:, None]
        return a.sqrt(), (1 - a).sqrt()

    def loss(
        self,
        denoiser: Denoiser,
        x0: torch.Tensor,
        y: torch.Tensor,
        generator: torch.Generator,
        label_dropout: float = 0.0,
    ) -> torch.Tensor:
        """Mean squared error of the prediction at a uniformly drawn step, every draw from ``generator``."""
        n = len(x0)
        t = torch.randint(0, self.timesteps, (n,), generator=generator, device=x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device)
        if label_dropout > 0:
            drop = torch.rand(n, generator=generator, device=x0.device) < label_dropout
            y = torch.where(drop, torch.full_like(y, denoiser.null_class), y)
        signal, sigma = self._coefficients(t, x0)
        xt = signal * x0 + sigma * noise
        target = noise if self.prediction == "eps" else signal * noise - sigma * x0
        return (denoiser(xt, t, y) - target).pow(2).mean()

    def _guided(self, denoiser: Denoiser, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, guidance: float):
        if guidance == 1:
            return denoiser(x, t, y)
        null = torch.full_like(y, denoiser.null_class)
        if guidance == 0:
            return denoiser(x, t, null)
        cond, uncond = denoiser(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null])).chunk(2)
        return uncond + guidance * (cond - uncond)

    def schedule(self, steps: int) -> list[int]:
        """The DDIM timesteps, from the noisiest down to 0: ``steps`` evenly spaced, distinct."""
        steps = max(1, min(steps, self.timesteps))
        return sorted({round(s) for s in torch.linspace(self.timesteps - 1, 0, steps).tolist()}, reverse=True)

    @torch.no_grad()
    def sample(
        self,
        denoiser: Denoiser,
        y: torch.Tensor,
        steps: int,
        guidance: float = 1.0,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        solver: str = "ddim",
    ) -> torch.Tensor:
        """Standardised latents for labels ``y`` by ``solver`` (``SOLVERS``); noise from ``generator``."""
        if solver not in SOLVERS:
            raise ValueError(f"unknown solver {solver!r}; expected one of {SOLVERS}")
        device = y.device
        gen_device = generator.device if generator is not None else device
        x = temperature * torch.randn((len(y), denoiser.dim), generator=generator, device=gen_device).to(device)
        alpha_bar = self.alpha_bar.to(device)
        timesteps = self.schedule(steps)
        previous_x0, previous_h = None, None  # DPM-Solver++(2M)'s memory of the last step
        for i, step in enumerate(timesteps):
            a = alpha_bar[step].float()
            last = i + 1 == len(timesteps)
            alpha_bar_next = alpha_bar.new_ones(()) if last else alpha_bar[timesteps[i + 1]]  # float64
            a_prev = alpha_bar_next.float()
            t = torch.full((len(y),), step, device=device, dtype=torch.long)
            out = self._guided(denoiser, x, t, y, guidance)
            if self.prediction == "v":
                x0 = a.sqrt() * x - (1 - a).sqrt() * out
                eps = (1 - a).sqrt() * x + a.sqrt() * out
            else:
                eps = out
                x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
            if solver == "ddim" or last:
                x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
                continue
            # DPM-Solver++(2M) in log-SNR lambda = log(alpha / sigma): x' = (sigma'/sigma) x - alpha' expm1(-h) D,
            # D the x0 estimate extrapolated from the last two (first order, i.e. DDIM, on the first step)
            h = _half_log_snr(alpha_bar_next) - _half_log_snr(alpha_bar[step])
            d = x0
            if previous_x0 is not None and i + 2 < len(timesteps):  # the step into t = 0 first order, see above
                r = previous_h / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * previous_x0
            sigma_ratio = ((1 - alpha_bar_next) / (1 - alpha_bar[step])).sqrt()
            x = sigma_ratio.float() * x - (a_prev.sqrt() * torch.expm1(-h).float()) * d
            previous_x0, previous_h = x0, h
        return x


def _half_log_snr(alpha_bar: torch.Tensor) -> torch.Tensor:
    """lambda = log(alpha / sigma) of a step (float64), the variable DPM-Solver steps in."""
    return 0.5 * (torch.log(alpha_bar) - torch.log1p(-alpha_bar))
