"""Adversarial refinement of a trained CVAE's decoder, with the encoder frozen (the ``refine`` stage's algorithm).

Why: a decoder trained on a Gaussian likelihood alone draws the average of the images a latent could
stand for, so its reconstructions are blurry and the decoder's floor (decodes of posterior draws)
bounds every prior's samples. VQGAN's recipe (Esser et al. 2021) adds a PatchGAN discriminator with a
hinge loss whose gradient is balanced against the reconstruction term's by an *adaptive weight*: the
ratio of the two terms' gradient norms at the decoder's last layer. Stable Diffusion's autoencoder
fine-tune changes only the decoder: the encoder, and so every latent and every prior fitted on them,
stays valid, which lets a refinement sit between ``train`` and ``sample`` without re-fitting the prior.

No pretrained network enters a loss (no LPIPS offline; the Inception network is the judge).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..batches import BatchStream
from ..config import RefineParams
from ..errors import PipelineError
from ..models import BaseCVAE
from ..models.base import IMAGE_DIM
from ..training.checkpoint import load_checkpoint, save_checkpoint


class RefinementError(PipelineError):
    """The refinement cannot go on (a non-finite loss)."""


class PatchDiscriminator(nn.Module):
    """pix2pix's N-layer PatchGAN (as in VQGAN): stride-2 4x4 convolutions, then two stride-1 ones, one
    logit per patch. ``layers`` 2 on a 32x32 image gives 6x6 logits, each seeing 34x34 pixels; BatchNorm
    as in both references."""

    def __init__(self, width: int = 64, layers: int = 2):
        super().__init__()
        if layers < 1:
            raise ValueError(f"a PatchGAN needs at least one layer, got {layers}")
        modules: list[nn.Module] = [nn.Conv2d(3, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        channels = width
        for n in range(1, layers + 1):
            previous, channels = channels, width * min(2**n, 8)
            stride = 2 if n < layers else 1
            modules += [nn.Conv2d(previous, channels, 4, stride, 1, bias=False), nn.BatchNorm2d(channels)]
            modules.append(nn.LeakyReLU(0.2))
        modules.append(nn.Conv2d(channels, 1, 4, 1, 1))
        self.net = nn.Sequential(*modules)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> patch logits [B, 1, h, w]."""
        return self.net(images * 2 - 1)


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean())


def hinge_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.mean()


def adaptive_weight(
    reconstruction: torch.Tensor, adversarial: torch.Tensor, last_layer: torch.Tensor, bound: float
) -> torch.Tensor:
    """VQGAN's balance: ||d rec / d W|| / (||d adv / d W|| + 1e-4) at the decoder's last weight W, clamped to
    [0, ``bound``] and detached. It keeps the adversarial gradient a set fraction of the reconstruction's
    whatever the two losses' scales."""
    rec_grad = torch.autograd.grad(reconstruction, last_layer, retain_graph=True)[0]
    adv_grad = torch.autograd.grad(adversarial, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (adv_grad.norm() + 1e-4)).clamp(0.0, bound).detach()


def split_parameters(model: BaseCVAE) -> tuple[list[str], list[str], str]:
    """(encoder parameter names, decoder parameter names, the decoder's last weight) of any backbone,
    found by running it: whatever ``encode`` reads is the encoder's (a label embedding both halves share
    included, so the encoder's output cannot move); whatever else ``decode`` reads is the decoder's (the
    likelihood's learned std with it); the last weight is that of the last module ``decode`` ran."""
    device = next(model.parameters()).device
    x = torch.rand(2, 3, 32, 32, device=device)
    y = torch.zeros(2, dtype=torch.long, device=device)
    names = {id(p): n for n, p in model.named_parameters()}

    def touched(loss: torch.Tensor) -> set[str]:
        params = [p for p in model.parameters() if p.requires_grad]
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return {names[id(p)] for p, g in zip(params, grads) if g is not None}

    encoder = touched(sum(t.float().sum() for t in model.encode(x, y) if t is not None))
    order: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda m, i, o: order.append(m)) for m in model.modules() if m is not model]
    try:
        z = torch.randn(2, model.latent_dim, device=device, requires_grad=True)
        out = model.decode(z, y)
    finally:
        for h in hooks:
            h.remove()
    decoder = touched(model.likelihood.nll(out, x).sum()) - encoder
    last = next(m for m in reversed(order) if isinstance(getattr(m, "weight", None), nn.Parameter))
    last_name = names[id(last.weight)]
    if last_name not in decoder:
        raise ValueError(f"the decoder's last layer ({last_name}) is shared with the encoder; cannot refine it alone")
    return sorted(encoder), sorted(decoder), last_name


#: the figures of a step, averaged over each ``checkpoint_every`` steps into a row of the loss curves
FIGURES = ("reconstruction", "generator", "discriminator", "weight", "real_logit", "fake_logit")


class DecoderRefiner:
    """Fine-tunes ``model``'s decoder against a PatchGAN on posterior draws of ``images``; the encoder's
    parameters are frozen (``requires_grad`` off, never in an optimiser). ``refined`` is the model to
    save: the decoder's EMA when ``ema_decay`` is set, the encoder bit-for-bit the input's.

    Resumable like the training: every ``checkpoint_every`` steps the decoder, its EMA, the discriminator,
    both optimisers and the curves go to ``checkpoint_path`` under the stage's fingerprint; the batch order
    is keyed on (seed, epoch) and each step's latent noise on (seed, step), so a run killed and resumed
    ends with the weights of one that never stopped."""

    def __init__(
        self,
        model: BaseCVAE,
        cfg: RefineParams,
        images,
        labels,
        device: torch.device,
        checkpoint_path: Path | None = None,
        fingerprint: str = "",
    ):
        self.cfg = cfg
        self.device = device
        self.checkpoint_path = checkpoint_path
        self.fingerprint = fingerprint
        self.model = copy.deepcopy(model).to(device).train()
        _, decoder, last = split_parameters(self.model)
        params = dict(self.model.named_parameters())
        for name, p in params.items():
            p.requires_grad_(name in decoder)
        self.decoder_names = decoder
        self.last_layer = params[last]
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(cfg.seed)
            self.discriminator = PatchDiscriminator(cfg.disc_width, cfg.disc_layers).to(device)
        self.optimizer = torch.optim.Adam([params[n] for n in decoder], lr=cfg.lr, betas=(0.5, 0.9))
        self.disc_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=cfg.disc_lr, betas=(0.5, 0.9))
        #: the decoder's exponential moving average (warm-up ramp as in training); the encoder is never touched
        self.ema = copy.deepcopy(self.model).requires_grad_(False) if cfg.ema_decay is not None else None
        self.images, self.labels = images, labels
        self.batches_per_epoch = -(-len(labels) // cfg.batch_size)
        self.step = 0
        self.history: list[dict] = []

    @property
    def refined(self) -> BaseCVAE:
        return (self.ema if self.ema is not None else self.model).eval()

    # --- checkpoints ---------------------------------------------------------------
    def state(self) -> dict:
        return {
            "fingerprint": self.fingerprint,
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "discriminator": self.discriminator.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "disc_optimizer": self.disc_optimizer.state_dict(),
            "history": self.history,
        }

    def try_resume(self) -> bool:
        """Restore the last checkpoint of these inputs; False when there is none."""
        if self.checkpoint_path is None:
            return False
        state = load_checkpoint(self.checkpoint_path, self.fingerprint)
        if state is None:
            return False
        self.model.load_state_dict(state["model"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.disc_optimizer.load_state_dict(state["disc_optimizer"])
        self.step, self.history = state["step"], list(state["history"])
        return True

    def kept_checkpoint(self) -> str:
        if not self.history or self.checkpoint_path is None:
            return "no checkpoint of this refinement was written, so nothing is kept"
        return f"the last good checkpoint ({self.checkpoint_path}, step {self.history[-1]['step']}) is kept"

    # --- training ------------------------------------------------------------------
    @torch.no_grad()
    def _update_ema(self) -> None:
        n = self.step - 1
        weight = 1.0 - min(self.cfg.ema_decay, (1.0 + n) / (10.0 + n))
        averaged, current = dict(self.ema.named_parameters()), dict(self.model.named_parameters())
        names = self.decoder_names
        torch._foreach_lerp_([averaged[k] for k in names], [current[k] for k in names], weight)

    def _stream(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches from step ``self.step`` on: epoch e's order and flips come from a generator seeded on
        (seed, e), so a resumed run skips to where it stopped without replaying the training."""
        epoch, skip = divmod(self.step, self.batches_per_epoch)
        while True:
            generator = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
            stream = BatchStream(
                self.images, self.labels, self.cfg.batch_size, self.device, True, generator, hflip=True
            )
            for i, batch in enumerate(stream):
                if i >= skip:
                    yield batch
            epoch, skip = epoch + 1, 0

    def reconstruction_loss(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per pixel-channel: the model's own likelihood (``nll``, nats) or the mean absolute error (``l1``)."""
        if self.cfg.reconstruction == "l1":
            return (self.model.likelihood.mean(out) - x).abs().mean()
        return self.model.likelihood.nll(out, x).mean() / IMAGE_DIM

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        cfg = self.cfg
        # the posterior draw's noise is keyed on (seed, step): reproducible, whatever ran before
        with torch.no_grad(), torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            torch.manual_seed(cfg.seed * 1_000_003 + self.step)
            z, _ = self.model.draw_latent(self.model.encode(x, y))
        out = self.model.decode(z, y)
        fake = self.model.likelihood.mean(out)
        # the decoder: reconstruction + the adaptive weight times the hinge generator loss
        rec = self.reconstruction_loss(out, x)
        gen = hinge_generator_loss(self.discriminator(fake))
        self._stop_unless_finite({"reconstruction": rec, "generator": gen})
        if self.step >= cfg.delay and cfg.adversarial_weight > 0:
            weight = adaptive_weight(rec, gen, self.last_layer, cfg.max_weight) * cfg.adversarial_weight
        else:
            weight = torch.zeros((), device=x.device)
        self.optimizer.zero_grad(set_to_none=True)
        (rec + weight * gen).backward()
        self.optimizer.step()
        # the discriminator: real images against the decodes it was just shown
        real_logits, fake_logits = self.discriminator(x), self.discriminator(fake.detach())
        disc = hinge_discriminator_loss(real_logits, fake_logits)
        self._stop_unless_finite({"discriminator": disc})
        self.disc_optimizer.zero_grad(set_to_none=True)
        disc.backward()
        self.disc_optimizer.step()
        self.step += 1
        if self.ema is not None:
            self._update_ema()
        values = torch.stack([rec, gen, disc, weight, real_logits.mean(), fake_logits.mean()]).detach().tolist()
        return dict(zip(FIGURES, values))

    def _stop_unless_finite(self, losses: dict[str, torch.Tensor]) -> None:
        values = {k: v.item() for k, v in losses.items()}
        if not all(math.isfinite(v) for v in values.values()):
            described = ", ".join(f"{k} {v}" for k, v in values.items())
            raise RefinementError(
                f"non-finite refinement loss at step {self.step + 1} ({described}); {self.kept_checkpoint()}. "
                "Fix: lower refine.lr, refine.disc_lr or refine.adversarial_weight"
            )

    def run(self, on_row: Callable[[dict], None] | None = None) -> list[dict]:
        """Refine up to ``cfg.steps``; every ``checkpoint_every`` steps (and at the last) a row of the curves
        (the figures averaged over those steps, seconds per step) is appended, checkpointed and passed to
        ``on_row``."""
        stream = self._stream()
        sums, count, start = dict.fromkeys(FIGURES, 0.0), 0, time.perf_counter()
        while self.step < self.cfg.steps:
            figures = self.train_step(*next(stream))
            for k, v in figures.items():
                sums[k] += v
            count += 1
            if self.step % self.cfg.checkpoint_every and self.step != self.cfg.steps:
                continue
            row = {"step": self.step, **{k: v / count for k, v in sums.items()}}
            row["seconds_per_step"] = (time.perf_counter() - start) / count
            self.history.append(row)
            if self.checkpoint_path is not None:
                save_checkpoint(self.checkpoint_path, self.state())
            if on_row is not None:
                on_row(row)
            sums, count, start = dict.fromkeys(FIGURES, 0.0), 0, time.perf_counter()
        return self.history
