"""What ``sample`` and ``evaluate`` log to their run, so the stage scripts stay thin."""

from __future__ import annotations

from pathlib import Path

from .registry import record_scores, register_generator
from .tags import flatten_metrics


def log_samples(
    grid,
    settings: dict[str, str],
    sampling: dict,
    model_file: Path,
    classes: list[str],
    prior_file: Path | None,
    sampler_settings: dict,
    registered_model: str | None,
) -> dict:
    """The sample grid, the sampling settings as tags, and the generator that draws what was sampled
    (the model with its fitted prior, at the scored sampler settings), registered as ``registered_model``;
    returns the generator's record (``model_uri``, ``registered_model``, ``version``)."""
    import mlflow

    from ..serving import log_generator

    mlflow.log_image(grid, artifact_file="samples/final_grid.png")
    mlflow.set_tags(settings)
    mlflow.set_tags({f"samples.{key}": sampling[key] for key in ("latents", "images", "precision") if key in sampling})
    info = log_generator(model_file, classes, "generator", prior_file, sampler_settings, sampling["latents"])
    record = {"model_uri": info.model_uri, "sampled_in_run": mlflow.active_run().info.run_id}
    if registered_model:
        version = register_generator(registered_model, info.model_uri, record["sampled_in_run"])
        record |= {"registered_model": registered_model, "version": version}
        print(f"registered the generator as model '{registered_model}' version {version}")
    return record


def log_evaluation(
    run,
    metrics: dict,
    settings: dict[str, str],
    protocol: str,
    metrics_file: Path,
    generator: dict,
) -> None:
    """Every metric, the metrics file and the pipeline definition as of this stage, the settings as tags;
    then the scores go into the registered version of the generator that made the samples."""
    import mlflow

    mlflow.log_metrics(flatten_metrics(metrics))
    mlflow.log_artifact(str(metrics_file))
    for pipeline_file in ("dvc.yaml", "dvc.lock"):  # dvc.lock as of this stage: earlier stages' hashes
        if Path(pipeline_file).is_file():
            mlflow.log_artifact(pipeline_file, artifact_path="pipeline")
    mlflow.set_tags({"fid_protocol": protocol, **settings})
    if generator.get("sampled_in_run"):  # the run holding the sample grid and the generator
        mlflow.set_tag("sampled_in_run", generator["sampled_in_run"])
    for group in ("samples", "features"):  # how the samples were drawn and their features computed
        if group in metrics:
            mlflow.set_tags({f"{group}.{k}": str(v) for k, v in metrics[group].items()})
    if generator.get("version"):
        record_scores(generator["registered_model"], generator["version"], run.info.run_id, metrics, protocol)
