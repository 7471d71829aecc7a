"""The Model Registry version of a generator: registered once, where it is logged; scored where evaluated.

``sample`` logs a new generator (the model with its prior, at the sampling settings) in each run it starts
and registers it at once, in the same process: one version per logged generator by construction, with
no search of the registry first that a concurrent stage could race. ``evaluate`` then writes its scores
into that version's tags and description; a re-evaluation of the same samples (``evaluate.*`` changed)
rewrites them, and each evaluation's figures stay in its own run.
"""

from __future__ import annotations

SCORES = ("fid", "kid_mean", "kid_std", "class_consistency", "precision", "recall")


def register_generator(name: str, model_uri: str, run_id: str) -> str:
    """Register the generator just logged at ``model_uri``; its version number."""
    import mlflow

    version = mlflow.register_model(model_uri, name, tags={"sampled_in_run": run_id})
    mlflow.MlflowClient().update_model_version(
        name, version.version, description=f"Not evaluated yet. MLflow run {run_id}."
    )
    return str(version.version)


def record_scores(name: str, version: str, run_id: str, metrics: dict, protocol: str) -> None:
    """The scores of evaluation run ``run_id`` in the version's tags and description."""
    import mlflow

    client = mlflow.MlflowClient()
    scores = {key: metrics[key] for key in SCORES if key in metrics}
    tags = {key: f"{value:.6g}" for key, value in scores.items()} | {
        "fid_protocol": protocol,
        "evaluated_in_run": run_id,
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    description = (
        f"FID {scores['fid']:.2f} ({protocol}); KID {scores['kid_mean']:.4f} ± {scores['kid_std']:.4f}; "
        f"class consistency {scores['class_consistency']:.3f}; precision {scores['precision']:.3f}, "
        f"recall {scores['recall']:.3f}. MLflow run {run_id}."
    )
    client.update_model_version(name, version, description=description)
