"""Stage ``evaluate``: score ``data/samples`` against the reference (FID, KID, per-class FID/KID,
class consistency, precision/recall) and the trained model on the test split (likelihood bounds,
reconstructions; with ``evaluate.reconstruction_fid`` also the reconstructions' FID, the decoder's
floor for the samples'). Writes ``reports/metrics.json`` and ``reports/per_class.csv``, logs to the
run the samples were logged to and registers the generator that made them."""

from __future__ import annotations

import tempfile
from pathlib import Path

from cvae_pipeline import paths, scoring, tracking
from cvae_pipeline.config import load_params
from cvae_pipeline.runtime import resolve_device
from cvae_pipeline.samples import SampleSet
from cvae_pipeline.stage import run_stage, stage_parser
from cvae_pipeline.tracking.stage_logging import log_evaluation


def main() -> None:
    args = stage_parser(__doc__).parse_args()
    params = load_params(args.params)
    cfg = params.evaluate
    metrics = scoring.score(cfg, resolve_device(cfg.device, "evaluate.device"))
    settings = tracking.flatten_params({"evaluate": cfg.model_dump()})
    run_id = experiment_id = registered = None
    with tracking.results_run(
        "evaluate",
        settings,
        params.mlflow.required,
        paths.SAMPLES_RUN_FILE,
        params.mlflow.experiment,
        tracking.flatten_params(params.model_dump()),
    ) as run:
        if run is not None:
            run_id, experiment_id = run.info.run_id, run.info.experiment_id
            with tempfile.TemporaryDirectory() as staging:  # the run logs a copy of the reports
                staged = Path(staging) / paths.METRICS.name
                scoring.write_reports(metrics, staged, Path(staging) / paths.PER_CLASS_PLOT.name)
                version = log_evaluation(
                    run,
                    metrics,
                    settings,
                    scoring.protocol(metrics, cfg.reference),
                    staged,
                    SampleSet.generator_uri(paths.SAMPLES_DIR),
                    params.mlflow.registered_model,
                )
            if version is not None:
                registered = f"models:/{params.mlflow.registered_model}/{version.version}"
                print(f"registered as model '{params.mlflow.registered_model}' version {version.version}")
    # The reports and the run file last, after the run has ended: a kill while the run is open leaves
    # them missing, so the next `dvc repro` re-runs this stage, which closes the run the kill left RUNNING.
    scoring.write_reports(metrics, paths.METRICS, paths.PER_CLASS_PLOT)
    tracking.write_run_file(run_id, experiment_id, registered, path=paths.EVAL_RUN_FILE)
    print(scoring.summary(metrics))


if __name__ == "__main__":
    run_stage(main)
