"""Fréchet Inception Distance on Inception pool3 features (the pytorch-fid convention).

``frechet_distance`` is pytorch-fid 0.3.0's ``calculate_frechet_distance``
rewritten for SciPy >= 1.18 (which removed ``sqrtm(..., disp=False)``): the same
matrix square root, the same ``eps`` offset when the product is singular and
the same tolerance on the imaginary part, so the numbers agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import linalg

from ..errors import PipelineError
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
        with np.load(path) as data:
            if "mu" not in data or "sigma" not in data:
                raise PipelineError(f"{path}: not FID statistics (needs arrays 'mu' and 'sigma')")
            count = int(data["count"]) if "count" in data else -1
            return cls(data["mu"], data["sigma"], count)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """d^2 = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 sqrt(S1 S2))."""
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise PipelineError("FID statistics have different dimensions")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise PipelineError(f"FID: imaginary component {np.max(np.abs(covmean.imag))} in sqrt(S1 S2)")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    sa, sb = Statistics.of(a), Statistics.of(b)
    return frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma)
