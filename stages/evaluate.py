"""Stage ``evaluate``: Inception features of the samples, then FID, KID, per-class FID/KID, class
consistency, precision/recall, the test-set likelihood bounds and reconstruction quality (and, with
``evaluate.reconstruction_fid``, the reconstructions' FID: the decoder's floor for the samples'), written
to ``reports/metrics.json`` and logged to the MLflow run the samples were logged to (the training's,
unless it already held samples of other settings)."""

from __future__ import annotations

import _src_path  # noqa: F401  (this checkout's src/, also in a queued experiment's copy)

import json
from pathlib import Path

import mlflow
import numpy as np

from cvae_pipeline import tracking
from cvae_pipeline.config import load_params
from cvae_pipeline.data.prepared import load_prepared
from cvae_pipeline.data.splits import stratified_subset
from cvae_pipeline.io import atomic_file, write_json_atomic
from cvae_pipeline.metrics.class_consistency import LinearProbe
from cvae_pipeline.metrics.evaluation import flatten_metrics, sample_quality
from cvae_pipeline.metrics.fid import Statistics, frechet_distance
from cvae_pipeline.metrics.inception import InceptionFeatures
from cvae_pipeline.metrics.likelihood import likelihood_metrics
from cvae_pipeline.metrics.reference import FEATURES_FILE, PROBE_FILE, STATS_FILE, FeatureSet
from cvae_pipeline.models.artifact import load_trained_model
from cvae_pipeline.sampling import reconstruct_set
from cvae_pipeline.stage import run_stage, stage_parser
from cvae_pipeline.training.runtime import resolve_device

SAMPLES = Path("data/samples")
REFERENCE = Path("data/fid_reference")
SAMPLE_FEATURES = Path("data/eval/sample_features.npz")
MODEL_FILE = Path("models/model.pt")
METRICS = Path("reports/metrics.json")
PER_CLASS_PLOT = Path("reports/per_class.csv")


def write_per_class_plot(metrics: dict, path: Path) -> None:
    """One row per class (FID, KID, class consistency): ``dvc plots diff`` draws them per experiment."""
    import pandas as pd

    rows = [{"class": name, **scores} for name, scores in metrics["per_class"].items()]
    rows.append({"class": "all", "fid": metrics["fid"], "kid": metrics["kid_mean"],
                 "class_consistency": metrics["class_consistency"]})
    with atomic_file(path) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)


def main() -> None:
    args = stage_parser(__doc__).parse_args()
    params = load_params(args.params)
    cfg = params.evaluate
    device = resolve_device(cfg.device)

    classes = json.loads((SAMPLES / "classes.json").read_text())
    images, labels = np.load(SAMPLES / "images.npy"), np.load(SAMPLES / "labels.npy")
    inception = InceptionFeatures(device, cfg.batch_size)
    fake = FeatureSet(inception(images, desc="inception samples"), labels, classes)
    fake.save(SAMPLE_FEATURES)
    reference_stats = Statistics.load(REFERENCE / STATS_FILE)
    metrics = sample_quality(FeatureSet.load(REFERENCE / FEATURES_FILE), reference_stats,
                             LinearProbe.load(REFERENCE / PROBE_FILE), fake, cfg)

    model, _ = load_trained_model(MODEL_FILE, device)
    test = load_prepared("data/prepared", "test")
    test_images, test_labels = test.images, test.labels
    if cfg.likelihood_images is not None and cfg.likelihood_images < len(test_labels):
        idx = stratified_subset(test_labels, cfg.likelihood_images, seed=0, what="evaluate.likelihood_images")
        test_images, test_labels = test_images[idx], test_labels[idx]
    metrics.update(likelihood_metrics(model, test_images, test_labels, cfg.iw_samples, device=device))
    if cfg.reconstruction_fid:
        recon = Statistics.of(inception(reconstruct_set(model, test_images, test_labels), desc="inception reconstructions"))
        metrics["reconstruction_fid"] = frechet_distance(recon.mu, recon.sigma, reference_stats.mu, reference_stats.sigma)
        metrics["reconstruction_fid_images"] = recon.count

    sampling_file = SAMPLES / "sampling.json"  # what the scored images are: latents from where, mean or draw
    if sampling_file.is_file():
        metrics["samples"] = json.loads(sampling_file.read_text())
    write_json_atomic(METRICS, metrics)
    write_per_class_plot(metrics, PER_CLASS_PLOT)
    protocol = f"{metrics['num_samples']} samples vs {metrics['reference_images']} {cfg.reference} images"
    if "samples" in metrics:
        protocol += f"; {metrics['samples']['images']}, latents from {metrics['samples']['latents']}"
    settings = tracking.flatten_params({"evaluate": cfg.model_dump()})
    # the run the samples were logged to (samples of an older pipeline: the training's), or a run nested
    # under it when that one holds an evaluation of other settings
    sampled_in = tracking.SAMPLES_RUN_FILE if tracking.SAMPLES_RUN_FILE.is_file() else tracking.RUN_FILE
    with tracking.results_run("evaluate", settings, params.mlflow.required, sampled_in) as run:
        if run is not None:
            mlflow.log_metrics(flatten_metrics(metrics))
            mlflow.log_artifact(str(METRICS))
            for pipeline_file in ("dvc.yaml", "dvc.lock"):  # dvc.lock as of this stage: earlier stages' hashes
                if Path(pipeline_file).is_file():
                    mlflow.log_artifact(pipeline_file, artifact_path="pipeline")
            mlflow.set_tags({"fid_protocol": protocol, **settings})
            if "samples" in metrics:
                mlflow.set_tags({f"samples.{k}": str(v) for k, v in metrics["samples"].items()})
            # the generator the sample stage logged with its GMM, else the model the training logged
            generator_file = SAMPLES / "generator.json"
            model_uri = (json.loads(generator_file.read_text())["model_uri"] if generator_file.is_file()
                         else tracking.read_run_file().get("model_uri"))
            if params.mlflow.registered_model and model_uri:
                version = tracking.register_evaluated_model(params.mlflow.registered_model, model_uri,
                                                            run.info.run_id, metrics, protocol)
                print(f"registered as model '{params.mlflow.registered_model}' version {version.version}")
    units = "bits/dim" if "test_neg_elbo_bits_per_dim" in metrics else "nats/image"
    elbo = metrics.get("test_neg_elbo_bits_per_dim", metrics.get("test_neg_elbo_nats"))
    print(f"FID {metrics['fid']:.2f}  KID {metrics['kid_mean']:.4f} ± {metrics['kid_std']:.4f}  "
          f"class consistency {metrics['class_consistency']:.3f} (real {metrics['class_consistency_real_ceiling']:.3f})  "
          f"precision {metrics['precision']:.3f} recall {metrics['recall']:.3f}  test -ELBO {elbo:.2f} {units}")
    if "reconstruction_fid" in metrics:
        print(f"reconstruction FID {metrics['reconstruction_fid']:.2f} ({metrics['reconstruction_fid_images']} test images)")


if __name__ == "__main__":
    run_stage(main)
