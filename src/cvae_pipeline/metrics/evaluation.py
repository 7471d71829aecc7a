"""All sample-quality metrics of a generated set against the reference features, in one place."""

from __future__ import annotations

import numpy as np

from ..config import EvaluateParams
from .class_consistency import LinearProbe, class_consistency
from .fid import Statistics, fid_against, fid_from_features
from .kid import kid
from .precision_recall import precision_recall
from .reference import FeatureSet


def sample_quality(
    reference: FeatureSet, reference_stats: Statistics, probe: LinearProbe, fake: FeatureSet, cfg: EvaluateParams
) -> dict:
    """FID, KID, per-class FID/KID, class consistency and precision/recall."""
    out: dict = {
        "fid": fid_against(fake.features, reference_stats),
        "num_samples": len(fake.labels),
        "reference_images": len(reference.labels),
    }
    out["kid_mean"], out["kid_std"] = kid(fake.features, reference.features, cfg.kid_subsets, cfg.kid_subset_size)
    per_class = {}
    for label, name in enumerate(fake.classes):
        f, r = fake.of_class(label), reference.of_class(label)
        if len(f) < 2 or len(r) < 2:
            continue
        kid_mean, _ = kid(f, r, cfg.kid_subsets, min(cfg.kid_subset_size, len(f), len(r)))
        per_class[name] = {"kid": kid_mean}
        per_class[name]["fid"] = fid_from_features(f, r)
    out["per_class"] = per_class
    out["per_class_fid_mean"] = float(np.mean([v["fid"] for v in per_class.values()]))
    out["per_class_kid_mean"] = float(np.mean([v["kid"] for v in per_class.values()]))
    probe = class_consistency(probe, fake.features, fake.labels)
    out["class_consistency"] = probe.accuracy
    out["class_consistency_real_ceiling"] = probe.real_cv_accuracy
    for label, acc in probe.per_class.items():
        out["per_class"].setdefault(fake.classes[label], {})["class_consistency"] = acc
    out["precision"], out["recall"] = precision_recall(reference.features, fake.features, cfg.pr_neighbours)
    return out
