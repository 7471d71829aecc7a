"""Improved precision and recall (Kynkäänniemi et al. 2019) on Inception features.

Each set's manifold is the union of balls around its points with radius the
distance to the k-th nearest neighbour (k = 3). Precision: the fraction of
generated samples inside the real manifold (quality); recall: the fraction of
real images inside the generated manifold (coverage). Distances come from
scikit-learn's exact nearest-neighbour search.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import pairwise_distances
from sklearn.neighbors import NearestNeighbors


def _radii(features: np.ndarray, k: int) -> np.ndarray:
    nn = NearestNeighbors(n_neighbors=k + 1).fit(features)  # +1: each point is its own nearest
    distances, _ = nn.kneighbors(features)
    return distances[:, -1]


def _coverage(manifold: np.ndarray, radii: np.ndarray, queries: np.ndarray, chunk: int = 1024) -> float:
    inside = 0
    for start in range(0, len(queries), chunk):
        d = pairwise_distances(queries[start : start + chunk], manifold)
        inside += int((d <= radii[None, :]).any(axis=1).sum())
    return inside / len(queries)


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    real, fake = np.asarray(real, dtype=np.float64), np.asarray(fake, dtype=np.float64)
    k = min(k, len(real) - 1, len(fake) - 1)
    precision = _coverage(real, _radii(real, k), fake)
    recall = _coverage(fake, _radii(fake, k), real)
    return precision, recall
