"""Stage ``sample``: ``sample.per_class`` images of every class from the trained model (seeded,
``sample.temperature``), saved as uint8 arrays + labels, with a class-by-row grid kept as a DVC plot
and logged to the training's MLflow run."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np

from cvae_pipeline import tracking
from cvae_pipeline.config import load_params
from cvae_pipeline.io import atomic_directory
from cvae_pipeline.models.artifact import load_trained_model
from cvae_pipeline.sampling import generate, grid_of
from cvae_pipeline.stage import run_stage, stage_parser
from cvae_pipeline.training.reporting import save_png
from cvae_pipeline.training.runtime import resolve_device

MODEL_FILE = Path("models/model.pt")
OUT_DIR = Path("data/samples")
GRID = Path("reports/samples/grid.png")


def main() -> None:
    args = stage_parser(__doc__).parse_args()
    params = load_params(args.params)
    cfg = params.sample
    model, classes = load_trained_model(MODEL_FILE, resolve_device(params.train.device))
    images, labels = generate(model, len(classes), cfg.per_class, cfg.temperature, cfg.seed, cfg.batch_size)
    with atomic_directory(OUT_DIR) as tmp:
        np.save(tmp / "images.npy", images)
        np.save(tmp / "labels.npy", labels)
        (tmp / "classes.json").write_text(json.dumps(classes) + "\n")
    grid = grid_of(images, labels, len(classes))
    save_png(grid, GRID)
    with tracking.recorded_run(params.mlflow.required) as run:
        if run is not None:
            mlflow.log_image(grid, artifact_file="samples/final_grid.png")
            mlflow.set_tags({f"sample.{k}": str(v) for k, v in cfg.model_dump().items()})
    print(f"sampled {len(labels)} images ({cfg.per_class} per class, temperature {cfg.temperature}) to {OUT_DIR}")


if __name__ == "__main__":
    run_stage(main)
