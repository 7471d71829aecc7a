"""What ``sample`` and ``evaluate`` log to their run, so the stage scripts stay thin."""

from __future__ import annotations

from pathlib import Path

from .registry import register_evaluated_model
from .tags import flatten_metrics


def log_samples(
    grid,
    settings: dict[str, str],
    sampling: dict,
    model_file: Path,
    classes: list[str],
    prior_file: Path | None,
    sampler_settings: dict,
) -> str:
    """The sample grid, the sampling settings as tags, and the generator that draws what was sampled
    (the model with its fitted prior, at the scored sampler settings); returns the generator's model URI."""
    import mlflow

    from ..serving import log_generator

    mlflow.log_image(grid, artifact_file="samples/final_grid.png")
    mlflow.set_tags(settings)
    mlflow.set_tags({f"samples.{key}": sampling[key] for key in ("latents", "images", "precision") if key in sampling})
    info = log_generator(model_file, classes, "generator", prior_file, sampler_settings, sampling["latents"])
    return info.model_uri


def log_evaluation(
    run,
    metrics: dict,
    settings: dict[str, str],
    protocol: str,
    metrics_file: Path,
    generator_uri: str | None,
    registered_model: str | None,
):
    """Every metric, the metrics file and the pipeline definition as of this stage, the settings as tags;
    then the generator that made the samples goes to the registry with its scores. Returns the
    registered version (None when not registering)."""
    import mlflow

    mlflow.log_metrics(flatten_metrics(metrics))
    mlflow.log_artifact(str(metrics_file))
    for pipeline_file in ("dvc.yaml", "dvc.lock"):  # dvc.lock as of this stage: earlier stages' hashes
        if Path(pipeline_file).is_file():
            mlflow.log_artifact(pipeline_file, artifact_path="pipeline")
    mlflow.set_tags({"fid_protocol": protocol, **settings})
    for group in ("samples", "features"):  # how the samples were drawn and their features computed
        if group in metrics:
            mlflow.set_tags({f"{group}.{k}": str(v) for k, v in metrics[group].items()})
    if registered_model and generator_uri:
        return register_evaluated_model(registered_model, generator_uri, run.info.run_id, metrics, protocol)
    return None
