"""Class consistency: does a sample of class c look like class c to a classifier of real images?

The classifier is a linear probe — standardised features + multinomial
logistic regression (scikit-learn) — fitted on the *reference* Inception
features, so no extra pass of the Inception network over the training set is
needed (hours on a 2-core CPU). Its cross-validated accuracy on real images is
the ceiling a perfect generator would reach under this probe.

Both depend on the reference alone, so the ``fid_reference`` stage fits the
probe once (about a minute here) and saves it; every ``evaluate`` only applies
it. The probe is saved as plain arrays (scaler mean/scale, weights, bias) and
applied as ``argmax(((x - mean) / scale) W^T + b)`` — exactly what the fitted
scikit-learn pipeline's ``predict`` does (tested) — rather than pickled: an
``.npz`` loads under any scikit-learn version and runs no code when loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from ..errors import PipelineError, reading
from ..io import atomic_file


@dataclass
class ProbeResult:
    accuracy: float  # on generated samples, against the labels they were generated for
    per_class: dict[int, float]
    real_cv_accuracy: float  # ceiling: cross-validated accuracy on real reference images


def make_probe(max_iter: int = 500, c: float = 0.05) -> Pipeline:
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter))


@dataclass
class LinearProbe:
    mean: np.ndarray  # [D]
    scale: np.ndarray  # [D]
    weights: np.ndarray  # [C, D]
    bias: np.ndarray  # [C]
    classes: np.ndarray  # [C] integer labels
    real_cv_accuracy: float

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray, folds: int = 3, seed: int = 0) -> LinearProbe:
        labels = np.asarray(labels)
        if len(np.unique(labels)) < 2:
            raise PipelineError("the class-consistency probe needs reference images of at least 2 classes")
        cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        ceiling = float(cross_val_score(make_probe(), features, labels, cv=cv).mean())
        pipe = make_probe().fit(features, labels)
        scaler, logistic = pipe[0], pipe[-1]
        weights, bias = logistic.coef_, logistic.intercept_
        if weights.shape[0] == 1:  # binary problem: sklearn keeps one row for the positive class
            weights, bias = np.concatenate([-weights, weights]), np.concatenate([-bias, bias])
        return cls(scaler.mean_, scaler.scale_, weights, bias, logistic.classes_, ceiling)

    def predict(self, features: np.ndarray) -> np.ndarray:
        scores = ((np.asarray(features, dtype=np.float64) - self.mean) / self.scale) @ self.weights.T + self.bias
        return self.classes[np.argmax(scores, axis=1)]

    def save(self, path: Path) -> None:
        with atomic_file(path) as tmp, open(tmp, "wb") as f:
            np.savez(
                f,
                mean=self.mean,
                scale=self.scale,
                weights=self.weights,
                bias=self.bias,
                classes=self.classes,
                real_cv_accuracy=self.real_cv_accuracy,
            )

    @classmethod
    def load(cls, path: Path) -> LinearProbe:
        if not Path(path).is_file():
            raise PipelineError(f"{path}: missing; run `dvc repro fid_reference` first")
        with reading(path), np.load(path) as data:
            return cls(
                data["mean"],
                data["scale"],
                data["weights"],
                data["bias"],
                data["classes"],
                float(data["real_cv_accuracy"]),
            )


def class_consistency(probe: LinearProbe, fake_features: np.ndarray, fake_labels: np.ndarray) -> ProbeResult:
    fake_labels = np.asarray(fake_labels)
    correct = probe.predict(fake_features) == fake_labels
    per_class = {int(c): float(correct[fake_labels == c].mean()) for c in np.unique(fake_labels)}
    return ProbeResult(float(correct.mean()), per_class, probe.real_cv_accuracy)
