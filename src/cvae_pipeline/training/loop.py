"""The training loop: one object that owns model, optimiser, schedules, EMA and checkpoints.

Resuming restores everything that influences the result — weights, optimiser
and scheduler state, EMA, both random generators, the epoch and the history —
so a run killed after epoch k and resumed ends with the same weights as one
that was never interrupted (same seed, same device).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from ..batches import BatchStream
from ..config import TrainParams
from ..data.prepared import PreparedSplit
from ..errors import PipelineError
from ..models import BaseCVAE
from ..precision import FP32, Precision, seconds_per_step
from .checkpoint import load_checkpoint, save_checkpoint
from .distributed import Distributed, per_process_batch
from .schedules import kl_weight, lr_factor

VALIDATION_SEED = 1234  # fixed noise for the validation ELBO, so epochs are comparable
#: a per-image loss past this has diverged though finite: ~300,000 nats per 8-bit pixel-channel, far past
#: any model of these images (a uniform one costs 5.5 nats per pixel-channel)
DIVERGED_NATS = 1e9


class TrainingError(PipelineError):
    """Training cannot go on (e.g. a non-finite loss)."""


EpochCallback = Callable[[dict, BaseCVAE], None]


#: torch's fused Adam(W): one kernel over all parameters (CPU and CUDA) instead of torch's default on CPU,
#: a loop over them; measured ~2x faster per optimiser step on the default model's 54 tensors
#: (docs/benchmarks.md's "fp32 before" row)
FUSED = {"fused": True}


def ema_with_warmup(decay: float):
    """EMA update (``AveragedModel``'s ``multi_avg_fn``) whose decay ramps up as
    min(decay, (1 + n) / (10 + n)) over n updates.

    The ramp (as in TensorFlow's ExponentialMovingAverage with ``num_updates``) keeps the average from
    being dominated by the random initial weights in short runs; torch's ``get_ema_multi_avg_fn`` uses a
    fixed decay. One ``_foreach_lerp_`` over all tensors measured ~3x faster than a per-tensor update on
    the default model (docs/benchmarks.md); integer buffers (counters) are copied, not averaged.
    """

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = float(num_averaged)
        weight = 1.0 - min(decay, (1.0 + n) / (10.0 + n))
        floats = [i for i, t in enumerate(averaged) if t.is_floating_point()]
        if floats:
            torch._foreach_lerp_([averaged[i] for i in floats], [current[i] for i in floats], weight)
        for i in set(range(len(averaged))) - set(floats):
            averaged[i].copy_(current[i])

    return update


class Trainer:
    def __init__(
        self,
        model: BaseCVAE,
        cfg: TrainParams,
        device: torch.device,
        train: PreparedSplit,
        val: PreparedSplit,
        checkpoint_path: Path,
        fingerprint: str,
        dist: Distributed | None = None,
    ):
        self.model = model.to(device)
        self.precision = FP32
        dist = dist or Distributed()
        self.dist = dist
        self.cfg = cfg
        self.device = device
        self.checkpoint_path = Path(checkpoint_path)
        self.fingerprint = fingerprint
        self.shuffle_rng = torch.Generator().manual_seed(cfg.seed)
        self.train_batches = BatchStream(
            train.images,
            train.labels,
            per_process_batch(cfg.batch_size, dist),
            device,
            True,
            self.shuffle_rng,
            rank=dist.rank,
            world_size=dist.world_size,
            hflip=cfg.augment == "hflip",
        )
        self.val_batches = BatchStream(val.images, val.labels, max(cfg.batch_size, 256), device, shuffle=False)
        #: a fixed batch of the training split for timing a step (benchmarks/speed.py; the shuffled stream's
        #: generator is part of the checkpoint, so timing must not draw from it)
        b = self.train_batches.batch_size
        self.probe_batch = next(iter(BatchStream(train.images[:b], train.labels[:b], b, device, shuffle=False)))
        steps_per_epoch = len(self.train_batches)
        self.total_steps = cfg.epochs * steps_per_epoch
        self.warmup_steps = int(round(cfg.warmup_epochs * steps_per_epoch))
        self.kl_warmup_steps = int(round(cfg.kl_warmup_epochs * steps_per_epoch))
        optimizer_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = optimizer_cls(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, **FUSED)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, self.total_steps, self.warmup_steps, cfg.lr_schedule)
        )
        self.ema = (
            AveragedModel(self.model, multi_avg_fn=ema_with_warmup(cfg.ema_decay), use_buffers=True)
            if cfg.ema_decay is not None
            else None
        )
        # under torchrun: DDP averages the gradients over processes in backward()
        self.forward = (
            DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None)
            if dist.enabled
            else None
        )
        self.epoch = 0  # epochs completed
        self.step = 0
        self.history: list[dict] = []
        self.extra: dict = {}  # saved with the checkpoint (e.g. the MLflow run id)

    def kept_checkpoint(self) -> str:
        """What a stop leaves behind, for its message: the checkpoint is this run's only once it saved one."""
        if self.epoch == 0:
            return "no checkpoint of this configuration was written, so nothing is kept"
        return f"the last good checkpoint ({self.checkpoint_path}, epoch {self.epoch}) is kept"

    def use_precision(self, precision: Precision) -> None:
        """Compute in ``precision`` from now on (weights and optimiser state stay fp32)."""
        self.precision = precision
        precision.module(self.model)
        if self.ema is not None:
            precision.module(self.ema.module)

    def seconds_per_step(self, precision: Precision) -> float:
        """One optimiser step's forward and backward on a fixed training batch in ``precision``, timed on a
        copy of the model (benchmarks/speed.py; nothing of the training changes)."""
        model = precision.module(copy.deepcopy(self.model)).train()
        x, y = self.probe_batch
        x = precision.batch(x)

        def step() -> None:
            with precision.autocast(self.device):
                loss = model.loss(x, y, beta=self.cfg.beta, free_bits=self.cfg.free_bits).loss
            loss.backward()
            model.zero_grad(set_to_none=True)

        return seconds_per_step(step)

    @property
    def eval_model(self) -> BaseCVAE:
        """The weights to evaluate and sample with: the EMA when enabled."""
        return self.ema.module if self.ema is not None else self.model

    # --- checkpoints ---------------------------------------------------------------
    def state(self) -> dict:
        return {
            "fingerprint": self.fingerprint,
            "epoch": self.epoch,
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "torch_rng": torch.get_rng_state(),
            # under torchrun each replica draws its own latent noise: all of their generators, so every
            # process resumes its own (only rank 0 writes the checkpoint)
            "replica_rng": self.dist.all_gather(torch.get_rng_state()),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "shuffle_rng": self.shuffle_rng.get_state(),
            "history": self.history,
            "extra": self.extra,
        }

    def try_resume(self) -> bool:
        """Restore the last checkpoint of this configuration; False when there is none."""
        state = load_checkpoint(self.checkpoint_path, self.fingerprint)
        if state is None:
            return False
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        replicas = state.get("replica_rng") or []
        torch.set_rng_state(replicas[self.dist.rank] if len(replicas) == self.dist.world_size else state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.shuffle_rng.set_state(state["shuffle_rng"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.history, self.extra = list(state["history"]), dict(state["extra"])
        return True

    # --- training ------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict:
        model = self.eval_model
        model.eval()
        totals = {"neg_elbo": 0.0, "nll": 0.0, "kl": 0.0}  # the plain bound (beta 1), comparable across runs
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(VALIDATION_SEED)
            for x, y in self.val_batches:
                with self.precision.autocast(self.device):
                    terms = model.loss(self.precision.batch(x), y)
                neg_elbo, nll, kl = torch.stack([terms.neg_elbo, terms.nll, terms.kl]).tolist()
                totals["neg_elbo"] += neg_elbo * len(y)
                totals["nll"] += nll * len(y)
                totals["kl"] += kl * len(y)
        n = self.val_batches.num_images
        return {f"val_{k}": v / n for k, v in totals.items()}

    def train_epoch(self) -> dict:
        cfg = self.cfg
        self.model.train()
        sums = {"loss": 0.0, "neg_elbo": 0.0, "nll": 0.0, "kl": 0.0}
        seen = 0
        start = time.perf_counter()
        bar = tqdm(
            self.train_batches,
            desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
            unit="batch",
            leave=False,
            mininterval=1.0,
            disable=not self.dist.is_main,
        )
        for x, y in bar:
            beta = kl_weight(self.step, self.kl_warmup_steps, cfg.beta)
            with self.precision.autocast(self.device):
                terms = self.model.loss(
                    self.precision.batch(x), y, beta=beta, free_bits=cfg.free_bits, forward=self.forward
                )
            # one host synchronisation per step for all four figures (a CUDA .item() waits for the GPU)
            loss, neg_elbo, nll, kl = torch.stack([terms.loss, terms.neg_elbo, terms.nll, terms.kl]).detach().tolist()
            if self.dist.any(not math.isfinite(loss)):  # every process stops together
                raise TrainingError(
                    f"non-finite loss ({loss}) at epoch {self.epoch + 1}, step {self.step}; "
                    f"{self.kept_checkpoint()}. Fix: lower train.lr, set train.grad_clip, or raise model.gaussian_std"
                )
            self.optimizer.zero_grad(set_to_none=True)
            terms.loss.backward()
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            self.step += 1
            n = len(y)
            seen += n
            sums["loss"] += loss * n
            sums["neg_elbo"] += neg_elbo * n
            sums["nll"] += nll * n
            sums["kl"] += kl * n
            bar.set_postfix(loss=f"{sums['loss'] / seen:.1f}", img_s=f"{seen / (time.perf_counter() - start):.0f}")
        seconds = time.perf_counter() - start
        *totals, seen = self.dist.all_reduce_sum([sums["loss"], sums["neg_elbo"], sums["nll"], sums["kl"], float(seen)])
        sums = dict(zip(sums, totals))
        return {
            "train_objective": sums["loss"] / seen,
            "train_neg_elbo": sums["neg_elbo"] / seen,
            "train_nll": sums["nll"] / seen,
            "train_kl": sums["kl"] / seen,
            "lr": self.scheduler.get_last_lr()[0],
            "beta": kl_weight(self.step - 1, self.kl_warmup_steps, cfg.beta),
            "epoch_seconds": seconds,
            "images_per_second": seen / seconds,
        }

    def fit(self, on_epoch_end: EpochCallback | None = None) -> list[dict]:
        """Train from the current epoch to ``cfg.epochs``; checkpoint after every epoch."""
        while self.epoch < self.cfg.epochs:
            record = {"epoch": self.epoch + 1, **self.train_epoch()}
            record.update(self.validate())
            if not math.isfinite(record["val_neg_elbo"]):
                raise TrainingError(
                    f"non-finite validation ELBO at epoch {record['epoch']}; {self.kept_checkpoint()}. "
                    "Fix: lower train.lr or set train.grad_clip"
                )
            worst = max(abs(record["train_objective"]), abs(record["val_neg_elbo"]))
            if worst > DIVERGED_NATS:
                raise TrainingError(
                    f"training diverged at epoch {record['epoch']}: a loss of {worst:.3g} nats/image (finite, but past "
                    f"{DIVERGED_NATS:.0e}); {self.kept_checkpoint()}. Fix: lower train.lr or set train.grad_clip"
                )
            self.epoch += 1
            self.history.append(record)
            state = self.state()  # a collective under torchrun: every process takes part
            if self.dist.is_main:
                save_checkpoint(self.checkpoint_path, state)
            self.dist.barrier()
            if not self.dist.is_main:
                continue
            print(
                f"epoch {record['epoch']}/{self.cfg.epochs}  train objective {record['train_objective']:.1f} "
                f"(-elbo {record['train_neg_elbo']:.1f}: nll {record['train_nll']:.1f} + kl {record['train_kl']:.1f})  "
                f"val -elbo {record['val_neg_elbo']:.1f}  lr {record['lr']:.2e}  beta {record['beta']:.2f}  "
                f"{record['epoch_seconds']:.1f}s  {record['images_per_second']:.0f} img/s ({self.precision.name})",
                flush=True,
            )
            if on_epoch_end is not None:
                on_epoch_end(record, self.eval_model)
        return self.history
