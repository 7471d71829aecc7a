"""Class consistency: does a sample of class c look like class c to a classifier of real images?

The classifier is a linear probe — standardised features + multinomial
logistic regression (scikit-learn) — fitted on the *reference* Inception
features the ``fid_reference`` stage already computed, so no extra pass of the
Inception network over the training set is needed (hours on a 2-core CPU).
Its cross-validated accuracy on real images is the ceiling a perfect
generator would reach under this probe.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler


@dataclass
class ProbeResult:
    accuracy: float  # on generated samples, against the labels they were generated for
    per_class: dict[int, float]
    real_cv_accuracy: float  # ceiling: cross-validated accuracy on real reference images


def make_probe(max_iter: int = 500, c: float = 0.05) -> Pipeline:
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter))


def class_consistency(real_features: np.ndarray, real_labels: np.ndarray, fake_features: np.ndarray,
                      fake_labels: np.ndarray, folds: int = 3, seed: int = 0) -> ProbeResult:
    real_labels, fake_labels = np.asarray(real_labels), np.asarray(fake_labels)
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    ceiling = float(cross_val_score(make_probe(), real_features, real_labels, cv=cv).mean())
    probe = make_probe().fit(real_features, real_labels)
    predicted = probe.predict(fake_features)
    correct = predicted == fake_labels
    per_class = {int(c): float(correct[fake_labels == c].mean()) for c in np.unique(fake_labels)}
    return ProbeResult(float(correct.mean()), per_class, ceiling)
