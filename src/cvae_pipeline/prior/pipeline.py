"""The ``prior`` stage's work: encode the training set with the trained model, fit the density of
``prior.kind`` on its latents (resuming a killed diffusion training from its checkpoint), and write the
prior, the DVC reports and the MLflow record — a new run of this stage, nested under the training's."""

from __future__ import annotations

import time

from .. import paths, tracking
from ..config import PipelineParams
from ..data.prepared import load_prepared
from ..data.sources import file_checksum
from ..io import save_png, write_json_atomic
from ..models.artifact import load_trained_model
from ..runtime import resolve_device
from ..sampling import generate, grid_of
from ..training.checkpoint import discard_checkpoint, stage_fingerprint
from ..training.reporting import write_history
from .artifact import GMMPrior, save_prior
from .diffusion import describe_denoiser
from .encoding import encode_posteriors
from .gmm import ClassGMM
from .training import PriorTrainer

#: the MLflow tag naming the precision the prior trained in (``prior.precision`` is the setting)
PRECISION_TAG = "prior.precision_used"
HISTORY_COLUMNS = ["epoch", "train_loss", "val_loss", "lr", "epoch_seconds", "latents_per_second"]
#: the grid the stage logs: the plain conditional prior (guidance 1), so it shows what the prior learned;
#: the guided samples are sample's grid
GRID_STEPS, GRID_GUIDANCE, GRID_SEED = 50, 1.0, 0
ENCODE_BATCH = 500


def fit_prior(params: PipelineParams) -> dict:
    """Fit ``models/prior.pt``; returns the metrics written to ``reports/prior/metrics.json``."""
    import mlflow

    cfg = params.prior
    device = resolve_device(cfg.device, "prior.device")
    model, classes = load_trained_model(paths.MODEL_FILE, device)
    model_sha = file_checksum(paths.MODEL_FILE, "sha256")
    started = time.perf_counter()
    with tracking.stage_run("prior", params) as run:
        history: list[dict] = []
        prior = None
        if cfg.kind != "none":
            train = load_prepared(paths.PREPARED_DIR, "train")
            encoded = encode_posteriors(model, train.images, train.labels, ENCODE_BATCH, cfg.augment == "hflip")
            print(f"encoded {len(encoded)} training latents ({encoded.mean.shape[1]} dimensions)", flush=True)
            if cfg.kind == "gmm":
                gmm = ClassGMM.fit(encoded.mean, encoded.labels, len(classes), cfg.gmm_components, cfg.seed)
                prior = GMMPrior(gmm)
                print(f"fitted {cfg.gmm_components}-component GMMs per class", flush=True)
            else:
                prior, history = _train_diffusion(params, model, classes, encoded, device, run is not None)
        save_prior(paths.PRIOR_FILE, cfg.kind, model_sha, classes, prior)
        write_history(history, paths.PRIOR_HISTORY, HISTORY_COLUMNS)
        sampler = prior.sampler(GRID_STEPS, GRID_GUIDANCE) if prior is not None else None
        images, labels = generate(model, len(classes), 10, 1.0, GRID_SEED, progress=False, latents=sampler)
        grid = grid_of(images, labels, len(classes))
        save_png(grid, paths.PRIOR_GRID)
        metrics = {"kind": cfg.kind, "prior_seconds": round(time.perf_counter() - started, 1)}
        if history:
            last = history[-1]
            metrics |= {
                "epochs": last["epoch"],
                "train_loss": round(last["train_loss"], 5),
                "val_loss": round(last["val_loss"], 5),
                "latents_per_second": round(sum(r["latents_per_second"] for r in history) / len(history), 1),
            }
        write_json_atomic(paths.PRIOR_METRICS, metrics)
        if run is not None:
            mlflow.log_image(grid, artifact_file="prior/samples.png")
            mlflow.log_metric("prior_seconds", metrics["prior_seconds"])  # the losses went in per epoch
    # the run file last, once the run has ended (tracking/handoff.py says why); then the checkpoint goes, so a
    # later run of this stage computes instead of "resuming" into this prior
    tracking.write_run_file(
        run.info.run_id if run else None, run.info.experiment_id if run else None, path=paths.PRIOR_RUN_FILE
    )
    discard_checkpoint(paths.PRIOR_CHECKPOINT)
    return metrics


def _train_diffusion(params, model, classes, encoded, device, track: bool):
    import mlflow

    cfg = params.prior
    val = load_prepared(paths.PREPARED_DIR, "val")
    val_encoded = encode_posteriors(model, val.images, val.labels, ENCODE_BATCH)
    trainer = PriorTrainer(
        cfg,
        encoded,
        val_encoded,
        len(classes),
        device,
        paths.PRIOR_CHECKPOINT,
        stage_fingerprint("prior", params.model_dump()),
        model.latent_shape,
    )
    if trainer.try_resume():
        print(f"resuming the prior from {paths.PRIOR_CHECKPOINT} after epoch {trainer.epoch}/{cfg.epochs}")
    choice = trainer.choose_precision()
    params_count = sum(p.numel() for p in trainer.denoiser.parameters())
    print(
        f"diffusion prior: {describe_denoiser(trainer.denoiser)} ({params_count:,} parameters), "
        f"{cfg.prediction}-prediction, "
        f"{cfg.timesteps} steps, {len(encoded)} latents/epoch, device {device}, "
        f"precision {choice.precision.name} ({choice.why})",
        flush=True,
    )
    if track:
        mlflow.set_tag(PRECISION_TAG, choice.precision.name)
        tracking.backfill_epochs(trainer.history, prefix="prior_")
    if trainer.history:  # resumed: the curve so far (a fresh run writes its first epoch's; until then the old
        write_history(trainer.history, paths.PRIOR_HISTORY, HISTORY_COLUMNS)  # output stays, should this fail)

    def on_epoch_end(record: dict) -> None:
        write_history(trainer.history, paths.PRIOR_HISTORY, HISTORY_COLUMNS)
        if track:
            mlflow.log_metrics(
                {f"prior_{k}": float(v) for k, v in record.items() if k != "epoch"}, step=record["epoch"]
            )

    history = trainer.fit(on_epoch_end)
    return trainer.fitted_prior(), history
