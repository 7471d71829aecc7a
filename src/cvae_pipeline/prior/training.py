"""Training the diffusion prior: one object that owns denoiser, optimiser, schedule, EMA and checkpoints.

Every random draw — the batch order, the posterior draws, the timesteps, the noise, the dropped labels —
comes from one generator whose state is checkpointed with the weights after every epoch, so a run
killed after epoch k and resumed ends with the same weights, bit for bit, as one never interrupted.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from ..config import PriorParams
from ..errors import PipelineError
from ..precision import FP32, Choice, Precision, resume_or_resolve, seconds_per_step
from ..training.checkpoint import load_checkpoint, save_checkpoint
from ..training.loop import FUSED, ema_with_warmup
from ..training.schedules import lr_factor
from .artifact import DiffusionPrior
from .diffusion import Denoiser, GaussianDiffusion, build_denoiser
from .encoding import EncodedSet

#: share of the optimiser steps the learning rate warms up over, before its cosine decay
WARMUP_FRACTION = 0.05
VALIDATION_SEED = 1234  # the same noise and timesteps every epoch, so validation losses are comparable
#: a loss past this has diverged though finite: the targets are standardised, so a useless prediction costs ~1
DIVERGED_LOSS = 1e6


class PriorTrainingError(PipelineError):
    """The prior's training cannot go on (a non-finite or diverged loss)."""


def standardisation(encoded: EncodedSet) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std of posterior draws (law of total variance: var of the means plus the
    mean posterior variance), so the denoiser sees unit-scale data in every dimension."""
    mean = encoded.mean.astype(np.float64).mean(0)
    var = encoded.mean.astype(np.float64).var(0) + (encoded.std.astype(np.float64) ** 2).mean(0)
    return torch.from_numpy(mean).float(), torch.from_numpy(np.sqrt(var)).float().clamp(min=1e-6)


class PriorTrainer:
    def __init__(
        self,
        cfg: PriorParams,
        train: EncodedSet,
        val: EncodedSet,
        num_classes: int,
        device: torch.device,
        checkpoint_path: Path,
        fingerprint: str,
        latent_shape: tuple[int, ...] | None = None,
    ):
        """``latent_shape``: the model's z layout (``BaseCVAE.latent_shape``); None = flat. A conv denoiser
        needs the map's (C, H, W)."""
        self.cfg, self.device = cfg, device
        self.checkpoint_path, self.fingerprint = Path(checkpoint_path), fingerprint
        self.mean, self.scale = standardisation(train)
        self.train = self._tensors(train)
        self.val = self._tensors(val)
        torch.manual_seed(cfg.seed)
        shape = tuple(latent_shape) if latent_shape is not None else (train.mean.shape[1],)
        self.denoiser = build_denoiser(cfg.denoiser, shape, num_classes, cfg.width, cfg.blocks).to(device)
        self.diffusion = GaussianDiffusion(cfg.timesteps, cfg.prediction)
        self.generator = torch.Generator(device=device).manual_seed(cfg.seed)
        self.steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
        total = cfg.epochs * self.steps_per_epoch
        warmup = round(WARMUP_FRACTION * total)
        self.optimizer = torch.optim.AdamW(
            self.denoiser.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, **FUSED
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, total, warmup, "cosine")
        )
        self.ema = (
            AveragedModel(self.denoiser, multi_avg_fn=ema_with_warmup(cfg.ema_decay), use_buffers=True)
            if cfg.ema_decay is not None
            else None
        )
        self.epoch = 0
        self.step = 0
        self.history: list[dict] = []
        self.precision = FP32
        self.resumed_precision: str | None = None  # the checkpoint's choice, kept by a resumed run

    def _tensors(self, encoded: EncodedSet) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean = ((torch.from_numpy(encoded.mean) - self.mean) / self.scale).to(self.device)
        std = (torch.from_numpy(encoded.std) / self.scale).to(self.device)
        return mean, std, torch.from_numpy(encoded.labels).to(self.device)

    @property
    def eval_denoiser(self) -> Denoiser:
        return self.ema.module if self.ema is not None else self.denoiser

    def kept_checkpoint(self) -> str:
        if self.epoch == 0:
            return "no checkpoint of this configuration was written, so nothing is kept"
        return f"the last good checkpoint ({self.checkpoint_path}, epoch {self.epoch}) is kept"

    # --- checkpoints ---------------------------------------------------------------
    def state(self) -> dict:
        return {
            "fingerprint": self.fingerprint,
            "epoch": self.epoch,
            "step": self.step,
            "denoiser": self.denoiser.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "generator": self.generator.get_state(),
            "history": self.history,
            "precision": self.precision.name,
        }

    def try_resume(self) -> bool:
        state = load_checkpoint(self.checkpoint_path, self.fingerprint)
        if state is None:
            return False
        self.denoiser.load_state_dict(state["denoiser"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        self.generator.set_state(state["generator"])
        self.epoch, self.step, self.history = state["epoch"], state["step"], list(state["history"])
        self.resumed_precision = state.get("precision")
        return True

    def choose_precision(self) -> Choice:
        """``prior.precision`` resolved on this machine (a resumed run keeps its checkpoint's choice)."""
        choice = resume_or_resolve(self.resumed_precision, self.cfg.precision, self.device)
        self.precision = choice.precision
        return choice

    def seconds_per_step(self, precision: Precision) -> float:
        """A training step's forward and backward in ``precision`` on a copy of the denoiser and its own
        generator, timed (benchmarks/speed.py): it changes nothing of the training."""
        denoiser = copy.deepcopy(self.denoiser).train()
        generator = torch.Generator(device=self.device).manual_seed(0)
        idx = torch.arange(min(self.cfg.batch_size, len(self.train[2])), device=self.device)
        x0, y = self._draw(self.train, idx, generator)

        def step() -> None:
            with precision.autocast(self.device):
                loss = self.diffusion.loss(denoiser, x0, y, generator, self.cfg.label_dropout)
            loss.backward()
            denoiser.zero_grad(set_to_none=True)

        return seconds_per_step(step)

    # --- training ------------------------------------------------------------------
    def _draw(self, split, idx: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Standardised posterior draws z ~ q(z|x, y) of the images ``idx``, and their labels."""
        mean, std, labels = split
        eps = torch.randn((len(idx), mean.shape[1]), generator=generator, device=self.device)
        return mean[idx] + std[idx] * eps, labels[idx]

    @torch.no_grad()
    def validate(self) -> float:
        """The conditional loss of the weights that sample (the EMA's) on the validation split."""
        denoiser = self.eval_denoiser.eval()
        generator = torch.Generator(device=self.device).manual_seed(VALIDATION_SEED)
        n = len(self.val[2])
        total = 0.0
        for start in range(0, n, self.cfg.batch_size):
            idx = torch.arange(start, min(n, start + self.cfg.batch_size), device=self.device)
            x0, y = self._draw(self.val, idx, generator)
            with self.precision.autocast(self.device):
                total += self.diffusion.loss(denoiser, x0, y, generator).item() * len(idx)
        return total / n

    def train_epoch(self) -> dict:
        cfg = self.cfg
        self.denoiser.train()
        n = len(self.train[2])
        order = torch.randperm(n, generator=self.generator, device=self.device)
        total, start = 0.0, time.perf_counter()
        bar = tqdm(
            range(0, n, cfg.batch_size), desc=f"prior epoch {self.epoch + 1}/{cfg.epochs}", unit="batch", leave=False
        )
        for i, first in enumerate(bar):
            x0, y = self._draw(self.train, order[first : first + cfg.batch_size], self.generator)
            with self.precision.autocast(self.device):
                loss = self.diffusion.loss(self.denoiser, x0, y, self.generator, cfg.label_dropout)
            value = loss.item()
            if not math.isfinite(value) or value > DIVERGED_LOSS:
                raise PriorTrainingError(
                    f"prior training diverged (loss {value:.3g}) at epoch {self.epoch + 1}, step {self.step}; "
                    f"{self.kept_checkpoint()}. Fix: lower prior.lr"
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update_parameters(self.denoiser)
            self.step += 1
            total += value * len(y)
            if i % 20 == 0:
                bar.set_postfix(loss=f"{value:.4f}")
        seconds = time.perf_counter() - start
        return {
            "train_loss": total / n,
            "lr": self.scheduler.get_last_lr()[0],
            "epoch_seconds": seconds,
            "latents_per_second": n / seconds,
        }

    def fit(self, on_epoch_end: Callable[[dict], None] | None = None) -> list[dict]:
        """Train from the current epoch to ``cfg.epochs``; checkpoint after every epoch."""
        while self.epoch < self.cfg.epochs:
            record = {"epoch": self.epoch + 1, **self.train_epoch(), "val_loss": self.validate()}
            if not math.isfinite(record["val_loss"]):
                raise PriorTrainingError(
                    f"non-finite validation loss of the prior at epoch {record['epoch']}; {self.kept_checkpoint()}. "
                    "Fix: lower prior.lr"
                )
            self.epoch += 1
            self.history.append(record)
            save_checkpoint(self.checkpoint_path, self.state())
            print(
                f"prior epoch {record['epoch']}/{self.cfg.epochs}  loss {record['train_loss']:.4f}  "
                f"val {record['val_loss']:.4f}  lr {record['lr']:.2e}  {record['epoch_seconds']:.1f}s  "
                f"{record['latents_per_second']:.0f} latents/s ({self.precision.name})",
                flush=True,
            )
            if on_epoch_end is not None:
                on_epoch_end(record)
        return self.history

    def fitted_prior(self) -> DiffusionPrior:
        denoiser = copy.deepcopy(self.eval_denoiser).cpu().eval()
        return DiffusionPrior(denoiser, self.diffusion, self.mean.clone(), self.scale.clone())
