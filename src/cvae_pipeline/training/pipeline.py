"""The ``train`` stage's work: build the model, resume an interrupted run's checkpoint or start afresh,
train, and write the model and the DVC reports; the MLflow run gets the curves, grids and final figures.
The generator (model + prior + sampler settings) is logged and registered downstream, by ``sample``."""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path

import torch

from .. import paths, tracking
from ..config import PipelineParams
from ..data.prepared import load_prepared
from ..errors import PipelineError
from ..io import save_png
from ..models import build_model
from ..models.artifact import save_trained_model
from ..precision import Choice, resume_or_resolve
from ..runtime import resolve_device
from . import distributed
from .checkpoint import discard_checkpoint, stage_fingerprint
from .loop import Trainer
from .reporting import EpochReporter, sample_grid, write_final_metrics, write_history

#: the MLflow param naming the precision training computed in (``train.precision`` is the setting)
PRECISION_PARAM = "train.precision_used"


def training_precision(trainer: Trainer, dist: distributed.Distributed) -> Choice:
    """``train.precision`` resolved on this machine (a resumed run keeps its checkpoint's choice); under
    torchrun every process uses rank 0's choice, so replicas on differing devices cannot disagree."""
    recorded = trainer.extra.get("precision")
    if not recorded and not dist.is_main:
        return dist.broadcast(None)
    choice = resume_or_resolve(recorded, trainer.cfg.precision, trainer.device)
    return choice if recorded else dist.broadcast(choice)  # a resumed checkpoint is the same in every process


def train_process(params: PipelineParams, params_file: Path, dist: distributed.Distributed) -> None:
    """One training process: all of it when alone, one replica (rank 0 writing) under torchrun."""
    cfg = params.train
    device = distributed.device_for(dist, resolve_device(cfg.device, "train.device"))

    train, val = load_prepared(paths.PREPARED_DIR, "train"), load_prepared(paths.PREPARED_DIR, "val")
    torch.manual_seed(cfg.seed)
    model = build_model(params.model, len(train.classes))
    run_key = stage_fingerprint("train", params.model_dump())
    trainer = Trainer(model, cfg, device, train, val, paths.CHECKPOINT, run_key, dist)
    if dist.enabled:  # different latent noise per replica; before resuming, which restores each replica's own
        torch.manual_seed(cfg.seed + 1000 * dist.rank)
    if trainer.try_resume() and dist.is_main:
        print(f"resuming from {paths.CHECKPOINT} after epoch {trainer.epoch}/{cfg.epochs}")
    choice = training_precision(trainer, dist)
    trainer.use_precision(choice.precision)
    trainer.extra["precision"] = choice.precision.name
    if dist.enabled:
        if not dist.is_main:
            trainer.fit()  # a replica: trains in step with rank 0, writes nothing
            if not dist.replicas_in_sync(trainer.model):
                raise PipelineError(f"process {dist.rank}: weights differ from the other processes")
            return
    print(
        f"{params.model.backbone} CVAE, {sum(p.numel() for p in model.parameters()):,} parameters, "
        f"{len(train)} train / {len(val)} val images, device {device}"
        + (f", {dist.world_size} processes (torchrun)" if dist.enabled else "")
        + f"; precision {choice.precision.name} ({choice.why})"
    )

    import mlflow

    run = tracking.runs.start_training_run(trainer.extra, trainer.history, params, params_file)
    with run if run is not None else contextlib.nullcontext():
        if run is not None:
            mlflow.log_param(PRECISION_PARAM, choice.precision.name)
        reporter = EpochReporter(
            len(train.classes),
            paths.TRAIN_HISTORY,
            paths.TRAIN_GRID,
            cfg.sample_every,
            cfg.epochs,
            history=trainer.history,
            track=run is not None,
        )
        epochs_before = trainer.epoch
        history = trainer.fit(on_epoch_end=reporter)
        if not dist.replicas_in_sync(trainer.model):
            raise PipelineError("the torchrun processes ended with different weights; the model is not saved")
        final_model = copy.deepcopy(trainer.eval_model).cpu().eval()
        if trainer.epoch == epochs_before:  # killed after its last checkpoint: no epoch wrote the DVC plots
            write_history(history, paths.TRAIN_HISTORY)
            grid = sample_grid(final_model, len(train.classes))
            save_png(grid, paths.TRAIN_GRID)
            if run is not None:
                mlflow.log_image(grid, artifact_file=f"samples/epoch_{trainer.epoch:04d}.png")
        save_trained_model(paths.MODEL_FILE, final_model, params.model.model_dump(), train.classes)
        metrics = write_final_metrics(history, paths.TRAIN_METRICS)
        if run is not None:
            mlflow.log_metrics({f"final_{k}": float(v) for k, v in metrics.items()})
    # the run file last, once the run has ended (tracking/handoff.py says why); then the checkpoint goes:
    # the stage is complete, and a later run of it must compute, not "resume" into this model
    tracking.write_run_file(run.info.run_id if run else None, run.info.experiment_id if run else None)
    discard_checkpoint(paths.CHECKPOINT)
    where = f"MLflow run {run.info.run_id}" if run is not None else "not tracked"
    print(
        f"trained {metrics['epochs']} epochs in {metrics['train_seconds']:.0f}s; "
        f"validation -ELBO {metrics['val_neg_elbo']:.1f} nats/image; {where}"
    )
