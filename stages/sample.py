"""Stage ``sample``: ``sample.per_class`` images of every class from the trained model (seeded; decoded by
the ``refine`` stage's decoder), with
latents from the prior stage's density (``sample.latents: fitted``: the diffusion prior at
``sample.solver``, ``sample.steps`` and ``sample.guidance``, or the GMM) or from the model's own prior, saved to
``data/samples`` with a class-by-row grid as a DVC plot. The generator that draws them (the model
with its prior and these settings) is logged and registered in a new MLflow run of this stage, nested
under the training's."""

from __future__ import annotations

from cvae_pipeline import paths, tracking
from cvae_pipeline.config import load_params
from cvae_pipeline.drawing import draw_sample_set
from cvae_pipeline.io import atomic_directory, save_png, write_json_atomic
from cvae_pipeline.refinement.artifact import load_decoding_model
from cvae_pipeline.runtime import resolve_device
from cvae_pipeline.samples import GENERATOR_FILE
from cvae_pipeline.sampling import grid_of
from cvae_pipeline.stage import run_stage, stage_parser
from cvae_pipeline.tracking.stage_logging import log_samples


def main() -> None:
    args = stage_parser(__doc__).parse_args()
    params = load_params(args.params)
    cfg = params.sample
    # the decoder refine wrote (the trained model itself when refine is off); its encoder is models/model.pt's,
    # whose checksum the prior was fitted on
    model, classes, model_sha = load_decoding_model(resolve_device(params.train.device, "train.device"))
    samples = draw_sample_set(model, classes, cfg, paths.PRIOR_FILE, model_sha)
    grid = grid_of(samples.images, samples.labels, len(classes))
    settings = tracking.flatten_params({"sample": cfg.model_dump()})
    # logging happens inside the atomic write: if MLflow fails, no data/samples is left without its generator
    with (
        tracking.stage_run("sample", params) as run,
        atomic_directory(paths.SAMPLES_DIR) as tmp,
    ):
        samples.save(tmp)
        run_id, experiment_id = (run.info.run_id, run.info.experiment_id) if run else (None, None)
        generator = {}
        if run is not None:
            generator = log_samples(
                grid,
                settings,
                samples.sampling,
                paths.REFINED_MODEL_FILE,
                classes,
                paths.PRIOR_FILE if cfg.latents == "fitted" else None,
                {
                    "temperature": cfg.temperature,
                    "solver": cfg.solver,
                    "steps": cfg.steps,
                    "guidance": cfg.guidance,
                    "precision": samples.sampling["precision"],
                },
                params.mlflow.registered_model,
            )
            write_json_atomic(tmp / GENERATOR_FILE, generator)
    save_png(grid, paths.SAMPLES_GRID)
    # the run file last, once the run has ended: a kill before it leaves the stage for DVC to re-run
    tracking.write_run_file(run_id, experiment_id, generator.get("model_uri"), path=paths.SAMPLES_RUN_FILE)
    s = samples.sampling
    print(
        f"sampled {len(samples.labels)} images ({cfg.per_class} per class, temperature {cfg.temperature}, "
        f"{s['latents']}, {s['images']}) to {paths.SAMPLES_DIR}"
    )


if __name__ == "__main__":
    run_stage(main)
