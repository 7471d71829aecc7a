"""What a training run shows: sample grids, the per-epoch history, final metrics, MLflow logging."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from ..io import atomic_file, save_png, write_json_atomic
from ..models import BaseCVAE
from ..sampling import generate, grid_of

GRID_SEED = 0  # the same latent draws every epoch, so grids show the model changing, not the noise


def sample_grid(
    model: BaseCVAE, num_classes: int, per_class: int = 10, seed: int = GRID_SEED, temperature: float = 1.0
) -> Image.Image:
    """One row per class, ``per_class`` samples each, as an RGB image."""
    was_training = model.training
    images, labels = generate(model, num_classes, per_class, temperature, seed, progress=False)
    model.train(was_training)
    return grid_of(images, labels, num_classes, per_row=per_class)


def write_history(history: list[dict], path: Path, columns: list[str] | None = None) -> None:
    """Per-epoch CSV that ``dvc plots`` draws (x: epoch). With ``columns``, a header is written even for
    no epochs (a DVC plot output that must exist); without, nothing is written then."""
    if not history and columns is None:
        return
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns or list(history[0]))
        writer.writeheader()
        writer.writerows(history)


def final_metrics(history: list[dict]) -> dict:
    last = history[-1]
    keep = ("train_objective", "train_neg_elbo", "train_nll", "train_kl", "val_neg_elbo", "val_nll", "val_kl")
    return {
        "epochs": last["epoch"],
        **{k: round(float(last[k]), 4) for k in keep},
        "train_seconds": round(sum(r["epoch_seconds"] for r in history), 1),
        "images_per_second": round(float(np.mean([r["images_per_second"] for r in history])), 1),
    }


class EpochReporter:
    """Called after every epoch: MLflow metrics (step = epoch), grids every N epochs, DVC files."""

    def __init__(
        self,
        num_classes: int,
        history_path: Path,
        grid_path: Path,
        sample_every: int,
        total_epochs: int,
        history: list[dict] | None = None,
        track: bool = True,
    ):
        self.num_classes = num_classes
        self.history_path = history_path
        self.grid_path = grid_path
        self.sample_every = sample_every
        self.total_epochs = total_epochs
        self.history: list[dict] = list(history or [])  # earlier epochs when resuming
        self.track = track  # False: MLflow is off (mlflow.required: false, store unreachable)

    def __call__(self, record: dict, model: BaseCVAE) -> None:
        import mlflow

        epoch = record["epoch"]
        self.history.append(record)
        write_history(self.history, self.history_path)
        if self.track:
            mlflow.log_metrics({k: float(v) for k, v in record.items() if k != "epoch"}, step=epoch)
        if epoch % self.sample_every == 0 or epoch == self.total_epochs:
            grid = sample_grid(model, self.num_classes)
            save_png(grid, self.grid_path)
            if self.track:
                mlflow.log_image(grid, artifact_file=f"samples/epoch_{epoch:04d}.png")


def write_final_metrics(history: list[dict], path: Path) -> dict:
    metrics = final_metrics(history)
    write_json_atomic(path, metrics)
    return metrics
