"""Stage ``sample``: ``sample.per_class`` images of every class from the trained model (seeded,
``sample.temperature``), saved as uint8 arrays + labels, with a class-by-row grid kept as a DVC plot
and logged to the training's MLflow run. Latents come from the model's prior or, with
``sample.latents: gmm``, from per-class Gaussian mixtures fitted here on the encoded training set;
images are the decoder's mean or, with ``sample.decoder_output: sample``, draws from the likelihood.
With the GMM, the model is logged again as a pyfunc generator that ships it (``data/samples/generator.json``
names it), and ``evaluate`` registers that one: the registry serves what was evaluated. A second
sampling of the same trained model with other settings logs to a new run nested under the training's
(``data/samples/mlflow_run.json`` names the run used), so it does not overwrite the first one's results."""

from __future__ import annotations

import _src_path  # noqa: F401  (this checkout's src/, also in a queued experiment's copy)

import json
from pathlib import Path

import mlflow
import numpy as np

from cvae_pipeline import tracking
from cvae_pipeline.config import load_params
from cvae_pipeline.data.prepared import load_prepared
from cvae_pipeline.io import atomic_directory
from cvae_pipeline.models.artifact import load_trained_model
from cvae_pipeline.expost import ClassGMM, encode_dataset
from cvae_pipeline.sampling import DECODER_OUTPUT_MEANING, generate, grid_of
from cvae_pipeline.serving import log_generator
from cvae_pipeline.stage import run_stage, stage_parser
from cvae_pipeline.training.reporting import save_png
from cvae_pipeline.training.runtime import resolve_device

MODEL_FILE = Path("models/model.pt")
OUT_DIR = Path("data/samples")
PREPARED_DIR = Path("data/prepared")
GRID = Path("reports/samples/grid.png")
GMM_FILE = "latent_gmm.npz"
GENERATOR_FILE = "generator.json"  # the MLflow model that ships the GMM: what evaluate registers


def main() -> None:
    args = stage_parser(__doc__).parse_args()
    params = load_params(args.params)
    cfg = params.sample
    model, classes = load_trained_model(MODEL_FILE, resolve_device(params.train.device))
    gmm = None
    if cfg.latents == "gmm":
        train = load_prepared(PREPARED_DIR, "train")
        latents = encode_dataset(model, train.images, train.labels, cfg.batch_size)
        gmm = ClassGMM.fit(latents, train.labels, len(classes), cfg.gmm_components, cfg.seed)
        print(f"fitted {cfg.gmm_components}-component GMMs per class on {len(latents)} encoded training images")
    images, labels = generate(model, len(classes), cfg.per_class, cfg.temperature, cfg.seed, cfg.batch_size,
                              latents=gmm, decoder_output=cfg.decoder_output)
    sampling = {"latents": "model prior" if gmm is None else f"ex-post GMM ({cfg.gmm_components} per class)",
                "images": DECODER_OUTPUT_MEANING[cfg.decoder_output], "temperature": cfg.temperature}
    grid = grid_of(images, labels, len(classes))
    # logging happens inside the atomic write: if MLflow fails, no data/samples is left without its generator
    settings = tracking.flatten_params({"sample": cfg.model_dump()})
    # the training's run, or a run nested under it when that one holds samples of other settings
    with tracking.results_run("sample", settings, params.mlflow.required) as run, atomic_directory(OUT_DIR) as tmp:
        np.save(tmp / "images.npy", images)
        np.save(tmp / "labels.npy", labels)
        (tmp / "classes.json").write_text(json.dumps(classes) + "\n")
        (tmp / "sampling.json").write_text(json.dumps(sampling) + "\n")
        if gmm is not None:
            gmm.save(tmp / GMM_FILE)
        tracking.write_run_file(run.info.run_id if run else None, run.info.experiment_id if run else None,
                                path=tmp / tracking.SAMPLES_RUN_FILE.name)
        if run is not None:
            mlflow.log_image(grid, artifact_file="samples/final_grid.png")
            mlflow.set_tags(settings)
            mlflow.set_tags({"samples.latents": sampling["latents"], "samples.images": sampling["images"]})
            if gmm is not None:
                info = log_generator(MODEL_FILE, classes, name="generator", latent_gmm=tmp / GMM_FILE,
                                     temperature=cfg.temperature)
                (tmp / GENERATOR_FILE).write_text(json.dumps({"model_uri": info.model_uri}) + "\n")
    save_png(grid, GRID)
    print(f"sampled {len(labels)} images ({cfg.per_class} per class, temperature {cfg.temperature}, "
          f"{sampling['latents']}, {sampling['images']}) to {OUT_DIR}")


if __name__ == "__main__":
    run_stage(main)
