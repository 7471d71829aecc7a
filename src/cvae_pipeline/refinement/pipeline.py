"""The ``refine`` stage's work: fine-tune the trained model's decoder against a PatchGAN (resuming a
killed run from its checkpoint) and write ``models/refined.pt``, the loss curves, a grid of decodes
before and after, the validation reconstruction error before and after, and the MLflow record — a new
run of this stage, nested under the training's. ``refine.steps: 0`` writes ``models/model.pt``'s bytes:
off reproduces the unrefined pipeline exactly."""

from __future__ import annotations

import shutil
import time

import numpy as np

from .. import paths, tracking
from ..config import PipelineParams
from ..data.prepared import load_prepared
from ..data.sources import file_checksum
from ..io import atomic_file, save_png, write_json_atomic
from ..models import BaseCVAE
from ..models.artifact import load_trained_model, save_trained_model
from ..runtime import resolve_device
from ..sampling import grid_of, reconstruct_set
from ..training.checkpoint import discard_checkpoint, stage_fingerprint
from ..training.reporting import write_history
from .adversarial import FIGURES, DecoderRefiner

HISTORY_COLUMNS = ["step", *FIGURES, "seconds_per_step"]
#: test images per class in the grid: each row shows them, the trained decoder's and the refined decoder's
#: decodes of one posterior draw of each
GRID_PER_CLASS = 4


def refine(params: PipelineParams) -> dict:
    """Write ``models/refined.pt``; returns the metrics written to ``reports/refine/metrics.json``."""
    import mlflow

    cfg = params.refine
    started = time.perf_counter()
    if cfg.steps == 0:
        return _off(params, started)

    device = resolve_device(cfg.device, "refine.device")
    model, classes = load_trained_model(paths.MODEL_FILE, device)
    base_sha = file_checksum(paths.MODEL_FILE, "sha256")
    train = load_prepared(paths.PREPARED_DIR, "train")
    refiner = DecoderRefiner(
        model,
        cfg,
        train.images,
        train.labels,
        device,
        paths.REFINE_CHECKPOINT,
        stage_fingerprint("refine", params.model_dump()),
    )
    if refiner.try_resume():
        print(f"resuming the refinement from {paths.REFINE_CHECKPOINT} after step {refiner.step}/{cfg.steps}")
    discriminator = sum(p.numel() for p in refiner.discriminator.parameters())
    print(
        f"refining {len(refiner.decoder_names)} decoder tensors against a {cfg.disc_layers}-layer PatchGAN "
        f"({discriminator:,} parameters), {cfg.reconstruction} + {cfg.adversarial_weight:g} x adaptive weight "
        f"(bound {cfg.max_weight:g}) from step {cfg.delay}, {cfg.steps} steps of {cfg.batch_size}, device {device}",
        flush=True,
    )
    with tracking.stage_run("refine", params) as run:
        track = run is not None

        def on_row(row: dict) -> None:
            write_history(refiner.history, paths.REFINE_HISTORY, HISTORY_COLUMNS)
            print(
                f"step {row['step']}/{cfg.steps}  reconstruction {row['reconstruction']:.4f}  generator "
                f"{row['generator']:.3f}  discriminator {row['discriminator']:.3f}  weight {row['weight']:.3f}  "
                f"{row['seconds_per_step']:.2f}s/step",
                flush=True,
            )
            if track:
                mlflow.log_metrics({f"refine_{k}": float(v) for k, v in row.items() if k != "step"}, step=row["step"])

        if track:  # rows a killed run checkpointed: its run is another one
            for row in refiner.history:
                mlflow.log_metrics({f"refine_{k}": float(v) for k, v in row.items() if k != "step"}, step=row["step"])
        history = refiner.run(on_row)
        refined = refiner.refined.cpu()
        model = model.cpu().eval()
        save_trained_model(paths.REFINED_MODEL_FILE, refined, params.model.model_dump(), classes, base_sha)
        write_history(history, paths.REFINE_HISTORY, HISTORY_COLUMNS)
        grid = _grid(model, refined, len(classes))
        save_png(grid, paths.REFINE_GRID)
        val = load_prepared(paths.PREPARED_DIR, "val")
        last = history[-1]
        metrics = {
            "steps": last["step"],
            "refine_seconds": round(time.perf_counter() - started, 1),
            **{f"final_{k}": round(last[k], 5) for k in FIGURES},
            "val_l1_before": round(_reconstruction_l1(model, val.images, val.labels), 5),
            "val_l1_after": round(_reconstruction_l1(refined, val.images, val.labels), 5),
        }
        write_json_atomic(paths.REFINE_METRICS, metrics)
        if track:
            mlflow.log_image(grid, artifact_file="refine/reconstructions.png")
            mlflow.log_metrics({k: float(v) for k, v in metrics.items() if not k.startswith("final_")})
    # the run file last, once the run has ended (tracking/handoff.py says why); then the checkpoint goes, so a
    # later run of this stage computes instead of "resuming" into this model
    tracking.write_run_file(
        run.info.run_id if run else None, run.info.experiment_id if run else None, path=paths.REFINE_RUN_FILE
    )
    discard_checkpoint(paths.REFINE_CHECKPOINT)
    return metrics


def _off(params: PipelineParams, started: float) -> dict:
    """``refine.steps: 0``: ``models/model.pt``'s bytes as the decoding model, recorded in a run like any other."""
    import mlflow

    with tracking.stage_run("refine", params) as run:
        with atomic_file(paths.REFINED_MODEL_FILE) as tmp:
            shutil.copyfile(paths.MODEL_FILE, tmp)
        write_history([], paths.REFINE_HISTORY, HISTORY_COLUMNS)
        model, classes = load_trained_model(paths.MODEL_FILE, "cpu")
        grid = _grid(model, model, len(classes))
        save_png(grid, paths.REFINE_GRID)
        metrics = {"steps": 0, "refine_seconds": round(time.perf_counter() - started, 1)}
        write_json_atomic(paths.REFINE_METRICS, metrics)
        if run is not None:
            mlflow.log_image(grid, artifact_file="refine/reconstructions.png")
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
    tracking.write_run_file(
        run.info.run_id if run else None, run.info.experiment_id if run else None, path=paths.REFINE_RUN_FILE
    )
    discard_checkpoint(paths.REFINE_CHECKPOINT)
    return metrics


def _reconstruction_l1(model: BaseCVAE, images: np.ndarray, labels: np.ndarray) -> float:
    """Mean absolute error of the decoded posterior means, per pixel-channel in [0, 1] (uint8-quantised)."""
    decoded = reconstruct_set(model, images, labels, progress=False)
    return float(np.abs(decoded.astype(np.float32) - images.astype(np.float32)).mean() / 255)


def _grid(trained: BaseCVAE, refined: BaseCVAE, num_classes: int):
    """One row per class: test images, the trained decoder's and the refined decoder's decodes of one
    posterior draw of each (the same draw)."""
    test = load_prepared(paths.PREPARED_DIR, "test")
    idx = np.concatenate([np.flatnonzero(test.labels == c)[:GRID_PER_CLASS] for c in range(num_classes)])
    images, labels = test.images[idx], test.labels[idx]
    before = reconstruct_set(trained, images, labels, progress=False, posterior_draws=True)
    after = reconstruct_set(refined, images, labels, progress=False, posterior_draws=True)
    rows, row_labels = [], []
    for c in range(num_classes):
        pick = labels == c
        rows += [images[pick], before[pick], after[pick]]
        row_labels.append(np.full(3 * int(pick.sum()), c))
    return grid_of(np.concatenate(rows), np.concatenate(row_labels), num_classes, per_row=3 * GRID_PER_CLASS)
