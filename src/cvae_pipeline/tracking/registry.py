"""The Model Registry version of an evaluated generator."""

from __future__ import annotations

SCORES = ("fid", "kid_mean", "kid_std", "class_consistency", "precision", "recall")


def register_evaluated_model(name: str, model_uri: str, run_id: str, metrics: dict, protocol: str):
    """Register the logged model ``model_uri`` under ``name`` with its scores in the version's tags and
    description. One version per logged model: a re-evaluation (``evaluate.*`` changed, logged to a
    run nested under the sampling's) updates the version of the same generator instead of adding one;
    a re-sampling logs a new generator (with its new latent density) and gets a new version."""
    import mlflow

    client = mlflow.MlflowClient()
    scores = {key: metrics[key] for key in SCORES if key in metrics}
    tags = {key: f"{value:.6g}" for key, value in scores.items()} | {
        "fid_protocol": protocol,
        "evaluated_in_run": run_id,
    }
    existing = [v for v in client.search_model_versions(f"name='{name}'") if v.source == model_uri]
    if existing:
        version = existing[0]
        for key, value in tags.items():
            client.set_model_version_tag(name, version.version, key, value)
    else:
        version = mlflow.register_model(model_uri, name, tags=tags)
    description = (
        f"FID {scores['fid']:.2f} ({protocol}); KID {scores['kid_mean']:.4f} ± {scores['kid_std']:.4f}; "
        f"class consistency {scores['class_consistency']:.3f}; precision {scores['precision']:.3f}, "
        f"recall {scores['recall']:.3f}. MLflow run {run_id}."
    )
    client.update_model_version(name, version.version, description=description)
    return version
