"""Stage ``train``: train the CVAE that ``model.*`` describes with ``train.*``, resuming from the
last checkpoint of the same configuration, and track it as one MLflow run.

Data-parallel on several GPUs/processes/nodes: ``torchrun --nproc_per_node=N stages/train.py``
(rank 0 writes and tracks; see ``training/distributed.py``)."""

from __future__ import annotations

import _src_path  # noqa: F401  (this checkout's src/, also in a queued experiment's copy)

import contextlib
import copy
import os
from pathlib import Path

import torch

from cvae_pipeline import tracking
from cvae_pipeline.config import PipelineParams, load_params
from cvae_pipeline.data.prepared import load_prepared
from cvae_pipeline.data.sources import file_checksum
from cvae_pipeline.errors import PipelineError
from cvae_pipeline.models import build_model
from cvae_pipeline.models.artifact import save_trained_model
from cvae_pipeline.serving import log_generator
from cvae_pipeline.stage import run_stage, stage_parser
from cvae_pipeline.training.checkpoint import code_fingerprint, fingerprint
from cvae_pipeline.training import distributed
from cvae_pipeline.training.loop import Trainer
from cvae_pipeline.training.reporting import (
    EpochReporter,
    sample_grid,
    save_png,
    write_final_metrics,
    write_history,
)
from cvae_pipeline.training.runtime import resolve_device, set_threads

PREPARED_DIR = Path("data/prepared")
CHECKPOINT = Path("models/checkpoints/last.pt")
MODEL_FILE = Path("models/model.pt")
REPORTS = Path("reports/train")


def main() -> None:
    args = stage_parser(__doc__).parse_args()
    params = load_params(args.params)
    cfg = params.train
    set_threads(cfg.num_threads)
    dist = distributed.from_environment()
    try:
        train_process(params, Path(args.params), dist)
    finally:
        distributed.shutdown(dist)


def train_process(params: PipelineParams, params_file: Path, dist: distributed.Distributed) -> None:
    """One training process: all of it when alone, one replica (rank 0 writing) under torchrun."""
    cfg = params.train
    device = distributed.device_for(dist, resolve_device(cfg.device))

    train, val = load_prepared(PREPARED_DIR, "train"), load_prepared(PREPARED_DIR, "val")
    torch.manual_seed(cfg.seed)
    model = build_model(params.model, len(train.classes))
    run_fingerprint = fingerprint(
        params.model.model_dump(),
        cfg.model_dump(exclude={"device", "num_threads", "sample_every"}),
        file_checksum(PREPARED_DIR / "manifest.json", "sha256"),
        code_fingerprint("models", "training"),
    )
    trainer = Trainer(model, cfg, device, train, val, CHECKPOINT, run_fingerprint, dist)
    if trainer.try_resume() and dist.is_main:
        print(f"resuming from {CHECKPOINT} after epoch {trainer.epoch}/{cfg.epochs}")
    if dist.enabled:
        torch.manual_seed(cfg.seed + 1000 * dist.rank)  # different latent noise per replica
        if not dist.is_main:
            trainer.fit()  # a replica: trains in step with rank 0, writes nothing
            if not dist.replicas_in_sync(trainer.model):
                raise PipelineError(f"process {dist.rank}: weights differ from the other processes")
            return
    print(f"{params.model.backbone} CVAE, {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"{len(train)} train / {len(val)} val images, device {device}"
          + (f", {dist.world_size} processes (torchrun)" if dist.enabled else ""))

    import mlflow

    run = start_or_resume_run(trainer, params, params_file)
    with run if run is not None else contextlib.nullcontext():
        reporter = EpochReporter(len(train.classes), REPORTS / "history.csv", REPORTS / "samples.png",
                                 cfg.sample_every, cfg.epochs, history=trainer.history, track=run is not None)
        epochs_before = trainer.epoch
        history = trainer.fit(on_epoch_end=reporter)
        if not dist.replicas_in_sync(trainer.model):
            raise PipelineError("the torchrun processes ended with different weights; the model is not saved")
        final_model = copy.deepcopy(trainer.eval_model).cpu().eval()
        if trainer.epoch == epochs_before:  # a finished run "resumed": no epoch wrote the DVC plots
            write_history(history, REPORTS / "history.csv")
            save_png(sample_grid(final_model, len(train.classes)), REPORTS / "samples.png")
        save_trained_model(MODEL_FILE, final_model, params.model.model_dump(), train.classes)
        metrics = write_final_metrics(history, REPORTS / "metrics.json")
        if run is not None:
            mlflow.log_metrics({f"final_{k}": float(v) for k, v in metrics.items()})
            model_info = log_generator(MODEL_FILE, train.classes)
            tracking.write_run_file(run.info.run_id, run.info.experiment_id, model_info.model_uri)
        else:
            tracking.write_run_file(None, None)
    where = f"MLflow run {run.info.run_id}" if run is not None else "not tracked"
    print(f"trained {metrics['epochs']} epochs in {metrics['train_seconds']:.0f}s; "
          f"val -elbo {metrics['val_loss']:.1f} nats/image; {where}")


def start_or_resume_run(trainer: Trainer, params: PipelineParams, params_file: Path):
    """The MLflow run of this training: the checkpoint's (when resuming) or a new one named after the
    DVC experiment, with the params and ``params.yaml`` attached. None when tracking is off
    (``mlflow.required: false`` and the store unreachable)."""
    import mlflow

    try:
        experiment_id = tracking.configure(params.mlflow.experiment)
    except tracking.TrackingError as exc:
        if params.mlflow.required:
            raise
        tracking.warn_untracked(exc)
        return None
    if run_id := trainer.extra.get("mlflow_run_id"):
        try:
            run = mlflow.start_run(run_id=run_id)
            trainer.extra["mlflow_run_id"] = run.info.run_id
            return run
        except mlflow.exceptions.MlflowException:
            print(f"note: MLflow run {run_id} of the checkpoint is gone; starting a new run")
    run = mlflow.start_run(experiment_id=experiment_id, run_name=os.environ.get("DVC_EXP_NAME"),
                           tags=tracking.run_tags("train"))
    mlflow.log_params(tracking.flatten_params(params.model_dump()))
    if params_file.is_file():
        mlflow.log_artifact(str(params_file), artifact_path="pipeline")
    trainer.extra["mlflow_run_id"] = run.info.run_id
    return run


if __name__ == "__main__":
    run_stage(main)
