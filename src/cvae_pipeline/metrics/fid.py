"""Fréchet Inception Distance on Inception pool3 features (the pytorch-fid convention).

``frechet_distance`` computes what pytorch-fid 0.3.0's ``calculate_frechet_distance``
computes, but takes Tr sqrt(S1 S2) through symmetric eigendecompositions instead of
``scipy.linalg.sqrtm`` of the non-symmetric product (which SciPy >= 1.18 also changed):
5x faster, and equal to pytorch-fid's value to ~1e-7 relative on this project's data
(CIFAR-10 test vs samples, per class, 20 vs 25 images; the tests check it against
pytorch-fid's own function, full-rank and rank-deficient).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import PipelineError, reading
from ..io import atomic_file


@dataclass
class Statistics:
    mu: np.ndarray  # [2048]
    sigma: np.ndarray  # [2048, 2048]
    count: int

    @classmethod
    def of(cls, features: np.ndarray) -> Statistics:
        features = np.asarray(features, dtype=np.float64)
        if len(features) < 2:
            raise PipelineError(f"FID needs at least 2 images, got {len(features)}")
        return cls(np.mean(features, axis=0), np.cov(features, rowvar=False), len(features))

    def save(self, path: Path) -> None:
        """``mu``/``sigma`` as pytorch-fid's ``--save-stats`` writes them (plus ``count``)."""
        with atomic_file(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, mu=self.mu, sigma=self.sigma, count=self.count)

    @classmethod
    def load(cls, path: Path) -> Statistics:
        with reading(path), np.load(path) as data:
            if "mu" not in data or "sigma" not in data:
                raise PipelineError(f"{path}: not FID statistics (needs arrays 'mu' and 'sigma')")
            count = int(data["count"]) if "count" in data else -1
            return cls(data["mu"], data["sigma"], count)


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr sqrt(S1 S2) for covariance matrices, via Tr sqrt(R S2 R) with R = sqrt(S1).

    R S2 R is symmetric positive semi-definite and has the same eigenvalues as S1 S2, so two
    symmetric eigendecompositions replace the general (Schur) ``sqrtm`` of the non-symmetric
    product: ~4 s instead of ~22 s for 2048 x 2048 here, no complex arithmetic, no ``eps``
    retry for singular products (rounding's tiny negative eigenvalues are clipped to 0).
    """
    eigenvalues, vectors = np.linalg.eigh(sigma1)
    root = (vectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ vectors.T
    middle = root @ sigma2 @ root
    product_eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
    return float(np.sum(np.sqrt(np.clip(product_eigenvalues, 0, None))))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """d^2 = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)) (pytorch-fid's value to ~1e-7 relative)."""
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise PipelineError("FID statistics have different dimensions")
    diff = mu1 - mu2
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt_product(sigma1, sigma2))


def fid_against(features: np.ndarray, reference: Statistics) -> float:
    """FID of a feature set against saved statistics; exact low-rank route for a set smaller than half
    the dimension.

    With the set's centred, scaled features Q (n x d), its covariance is Q^T Q, and the non-zero
    eigenvalues of S_ref Q^T Q are those of the small symmetric n x n matrix Q S_ref Q^T. For the
    default 1,000 samples against 2,048-dimensional statistics that replaces two 2,048 x 2,048
    eigendecompositions (~4 s on 2 cores) with one of 1,000 x 1,000; the same value to rounding.
    """
    features = np.asarray(features, dtype=np.float64)
    if len(features) * 2 >= features.shape[1]:
        stats = Statistics.of(features)
        return frechet_distance(stats.mu, stats.sigma, reference.mu, reference.sigma)
    if len(features) < 2:
        raise PipelineError(f"FID needs at least 2 images, got {len(features)}")
    if features.shape[1] != np.atleast_1d(reference.mu).shape[0]:
        raise PipelineError("FID statistics have different dimensions")
    mu = features.mean(axis=0)
    q = (features - mu) / np.sqrt(len(features) - 1)
    middle = q @ reference.sigma @ q.T
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
    diff = mu - reference.mu
    trace_sqrt = np.sum(np.sqrt(np.clip(eigenvalues, 0, None)))
    return float(diff.dot(diff) + np.sum(q * q) + np.trace(reference.sigma) - 2 * trace_sqrt)


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """FID of two feature sets; exact low-rank route when one set is smaller than half the dimension.

    With centred, scaled features P (n_a x d) and Q (n_b x d), S1 = P^T P and S2 = Q^T Q, and
    Tr sqrt(S1 S2) is the sum of the singular values of the small n_a x n_b matrix P Q^T — for the
    per-class FIDs (100 samples vs 1,000 images) milliseconds instead of seconds per class.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if min(len(a), len(b)) * 2 >= a.shape[1]:
        sa, sb = Statistics.of(a), Statistics.of(b)
        return frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma)
    if min(len(a), len(b)) < 2:
        raise PipelineError(f"FID needs at least 2 images, got {min(len(a), len(b))}")
    if a.shape[1] != b.shape[1]:
        raise PipelineError("FID features have different dimensions")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    p, q = (a - mu_a) / np.sqrt(len(a) - 1), (b - mu_b) / np.sqrt(len(b) - 1)
    diff = mu_a - mu_b
    nuclear = np.linalg.svd(p @ q.T, compute_uv=False).sum()
    return float(diff.dot(diff) + np.sum(p * p) + np.sum(q * q) - 2 * nuclear)
