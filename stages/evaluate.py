"""Stage ``evaluate``: score ``data/samples`` against the reference (FID, KID, per-class FID/KID,
class consistency, precision/recall) and the trained model on the test split (likelihood bounds,
reconstructions; with ``evaluate.reconstruction_fid`` also the reconstructions' FID, the decoder's
floor for the samples'). Writes ``reports/metrics.json`` and ``reports/per_class.csv``, logs them to a
new MLflow run of this stage, nested under the training's, and writes the scores into the registered
version of the generator that made the samples."""

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
    generator = SampleSet.generator(paths.SAMPLES_DIR)
    with tracking.stage_run("evaluate", params, training_figures=True) as run:
        if run is not None:
            run_id, experiment_id = run.info.run_id, run.info.experiment_id
            with tempfile.TemporaryDirectory() as staging:  # the run logs a copy of the reports
                staged = Path(staging) / paths.METRICS.name
                scoring.write_reports(metrics, staged, Path(staging) / paths.PER_CLASS_PLOT.name)
                log_evaluation(run, metrics, settings, scoring.protocol(metrics, cfg.reference), staged, generator)
            if generator.get("version"):
                registered = f"models:/{generator['registered_model']}/{generator['version']}"
                print(f"scores written to model '{generator['registered_model']}' version {generator['version']}")
    # The reports and the run file last, after the run has ended: a kill while the run is open leaves
    # them missing, so the next `dvc repro` re-runs this stage, which closes the run the kill left RUNNING.
    scoring.write_reports(metrics, paths.METRICS, paths.PER_CLASS_PLOT)
    tracking.write_run_file(run_id, experiment_id, registered, path=paths.EVAL_RUN_FILE)
    print(scoring.summary(metrics))


if __name__ == "__main__":
    run_stage(main)
