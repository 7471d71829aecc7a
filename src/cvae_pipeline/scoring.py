"""The ``evaluate`` stage's work: score a sample set against the reference, and the trained model's
likelihood and reconstructions on the test split. Every input is opened before the Inception pass,
so a missing file fails in a second, not after minutes of features."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .config import EvaluateParams
from .data.prepared import load_prepared
from .data.splits import stratified_subset
from .io import atomic_file, write_json_atomic
from .metrics.class_consistency import LinearProbe
from .metrics.evaluation import sample_quality
from .metrics.fid import Statistics, fid_against
from .metrics.inception import InceptionFeatures
from .metrics.likelihood import likelihood_metrics
from .metrics.reference import FEATURES_FILE, PROBE_FILE, STATS_FILE, FeatureSet
from .models.artifact import load_trained_model
from .paths import FID_REFERENCE_DIR, MODEL_FILE, PREPARED_DIR, SAMPLE_FEATURES, SAMPLES_DIR
from .refinement.artifact import load_decoding_model
from .samples import SampleSet
from .sampling import reconstruct_set


def score(cfg: EvaluateParams, device) -> dict:
    """All metrics of ``evaluate``, as written to ``reports/metrics.json``."""
    samples = SampleSet.load(SAMPLES_DIR)
    reference = FeatureSet.load(FID_REFERENCE_DIR / FEATURES_FILE)
    reference_stats = Statistics.load(FID_REFERENCE_DIR / STATS_FILE)
    probe = LinearProbe.load(FID_REFERENCE_DIR / PROBE_FILE)
    model, _ = load_trained_model(MODEL_FILE, device)  # the trained VAE: its likelihood bounds
    decoding = load_decoding_model(device)[0] if cfg.reconstruction_fid else None  # the samples' decoder: the floor
    test = load_prepared(PREPARED_DIR, "test")

    inception = InceptionFeatures(device, cfg.batch_size, engine=cfg.engine)
    print(f"Inception features: {', '.join(inception.settings.values())}")
    fake = FeatureSet(inception(samples.images, desc="inception samples"), samples.labels, samples.classes)
    fake.save(SAMPLE_FEATURES)
    metrics = sample_quality(reference, reference_stats, probe, fake, cfg)

    test_images, test_labels = test.images, test.labels
    if cfg.likelihood_images is not None and cfg.likelihood_images < len(test_labels):
        idx = stratified_subset(test_labels, cfg.likelihood_images, seed=0, what="evaluate.likelihood_images")
        test_images, test_labels = test_images[idx], test_labels[idx]
    metrics.update(likelihood_metrics(model, test_images, test_labels, cfg.iw_samples, device=device))
    if cfg.reconstruction_fid:
        metrics.update(floor(decoding, test.images, test.labels, len(samples.labels), reference_stats, inception))
    if samples.sampling:
        metrics["samples"] = samples.sampling
    metrics["features"] = inception.settings
    return metrics


def floor(model, images, labels, count: int, reference_stats: Statistics, inception) -> dict:
    """The FIDs a prior over this model's latents can at best reach, on ``count`` test images (as many
    as the samples, stratified, so the figures compare at the same sample size): the decodes of the
    posterior means (reconstructions) and of posterior draws z ~ q(z|x, y)."""
    if count < len(labels):
        idx = stratified_subset(labels, count, seed=0, what="the floor's test images")
        images, labels = images[idx], labels[idx]
    out = {}
    for key, draws in (("reconstruction_fid", False), ("posterior_draw_fid", True)):
        decoded = reconstruct_set(model, images, labels, posterior_draws=draws)
        features = inception(decoded, desc=f"inception {key.removesuffix('_fid').replace('_', ' ')}s")
        out[key] = fid_against(features, reference_stats)
    out["reconstruction_fid_images"] = len(labels)
    return out


def protocol(metrics: dict, reference: str) -> str:
    """What the FID was measured on, as the registry and the run say it."""
    text = f"{metrics['num_samples']} samples vs {metrics['reference_images']} {reference} images"
    if "samples" in metrics:
        text += f"; {metrics['samples']['images']}, latents from {metrics['samples']['latents']}"
    return text


def write_reports(metrics: dict, metrics_file: Path, per_class_file: Path) -> None:
    """``reports/metrics.json`` for ``dvc metrics`` and one row per class for ``dvc plots diff``."""
    import pandas as pd

    write_json_atomic(metrics_file, metrics)
    rows = [{"class": name, **scores} for name, scores in metrics["per_class"].items()]
    rows.append(
        {
            "class": "all",
            "fid": metrics["fid"],
            "kid": metrics["kid_mean"],
            "class_consistency": metrics["class_consistency"],
        }
    )
    with atomic_file(per_class_file) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)


def summary(metrics: dict) -> str:
    units = "bits/dim" if "test_neg_elbo_bits_per_dim" in metrics else "nats/image"
    elbo = metrics.get("test_neg_elbo_bits_per_dim", metrics.get("test_neg_elbo_nats", np.nan))
    line = (
        f"FID {metrics['fid']:.2f}  KID {metrics['kid_mean']:.4f} ± {metrics['kid_std']:.4f}  "
        f"class consistency {metrics['class_consistency']:.3f} (real {metrics['class_consistency_real_ceiling']:.3f})  "
        f"precision {metrics['precision']:.3f} recall {metrics['recall']:.3f}  test -ELBO {elbo:.2f} {units}"
    )
    if "reconstruction_fid" in metrics:
        images = metrics["reconstruction_fid_images"]
        line += (
            f"\nfloor: reconstructions FID {metrics['reconstruction_fid']:.2f}, posterior draws FID "
            f"{metrics['posterior_draw_fid']:.2f} ({images} test images)"
        )
    return line
