"""Stage ``train``: train the CVAE that ``model.*`` describes with ``train.*``, resuming from the
last checkpoint of the same configuration, and track it as one MLflow run."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch

from cvae_pipeline import tracking
from cvae_pipeline.config import load_params
from cvae_pipeline.data.prepared import load_prepared
from cvae_pipeline.data.sources import file_checksum
from cvae_pipeline.models import build_model
from cvae_pipeline.models.artifact import save_trained_model
from cvae_pipeline.stage import run_stage, stage_parser
from cvae_pipeline.training.checkpoint import code_fingerprint, fingerprint
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
    device = resolve_device(cfg.device)

    train, val = load_prepared(PREPARED_DIR, "train"), load_prepared(PREPARED_DIR, "val")
    torch.manual_seed(cfg.seed)
    model = build_model(params.model, len(train.classes))
    run_fingerprint = fingerprint(
        params.model.model_dump(),
        cfg.model_dump(exclude={"device", "num_threads", "sample_every"}),
        file_checksum(PREPARED_DIR / "manifest.json", "sha256"),
        code_fingerprint("models", "training"),
    )
    trainer = Trainer(model, cfg, device, train, val, CHECKPOINT, run_fingerprint)
    if trainer.try_resume():
        print(f"resuming from {CHECKPOINT} after epoch {trainer.epoch}/{cfg.epochs}")
    print(f"{params.model.backbone} CVAE, {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"{len(train)} train / {len(val)} val images, device {device}")

    import mlflow

    experiment_id = tracking.configure(params.mlflow.experiment)
    run = None
    if run_id := trainer.extra.get("mlflow_run_id"):
        try:
            run = mlflow.start_run(run_id=run_id)
        except mlflow.exceptions.MlflowException:
            print(f"note: MLflow run {run_id} of the checkpoint is gone; starting a new run")
    if run is None:
        run = mlflow.start_run(experiment_id=experiment_id, run_name=os.environ.get("DVC_EXP_NAME"),
                               tags=tracking.run_tags("train"))
        mlflow.log_params(tracking.flatten_params(params.model_dump()))
    trainer.extra["mlflow_run_id"] = run.info.run_id

    with run:
        reporter = EpochReporter(len(train.classes), REPORTS / "history.csv", REPORTS / "samples.png",
                                 cfg.sample_every, cfg.epochs, history=trainer.history)
        epochs_before = trainer.epoch
        history = trainer.fit(on_epoch_end=reporter)
        final_model = copy.deepcopy(trainer.eval_model).cpu().eval()
        if trainer.epoch == epochs_before:  # a finished run "resumed": no epoch wrote the DVC plots
            write_history(history, REPORTS / "history.csv")
            save_png(sample_grid(final_model, len(train.classes)), REPORTS / "samples.png")
        save_trained_model(MODEL_FILE, final_model, params.model.model_dump(), train.classes)
        metrics = write_final_metrics(history, REPORTS / "metrics.json")
        mlflow.log_metrics({f"final_{k}": float(v) for k, v in metrics.items()})
        tracking.log_sampler_model(final_model, train.classes)
        tracking.write_run_file(run.info.run_id, experiment_id)
    print(f"trained {metrics['epochs']} epochs in {metrics['train_seconds']:.0f}s; "
          f"val -elbo {metrics['val_loss']:.1f} nats/image; MLflow run {run.info.run_id}")


if __name__ == "__main__":
    run_stage(main)
