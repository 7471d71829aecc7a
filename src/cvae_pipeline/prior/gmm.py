"""An ex-post latent density: one Gaussian mixture per class, fitted on the encoded training set
(``prior.kind: gmm``).

A VAE's aggregate posterior q(z|y) rarely fills the N(0, I) prior; prior draws that land where no
training image was encoded decode to "in-between" images. Fitting a density to where the encoder puts
each class and sampling from it (RAE's GMM, Ghosh et al. 2020; the two-stage VAE of Dai & Wipf 2019)
fixes part of that without retraining. It is the cheap baseline of the ``prior`` stage: a diffusion
prior (``diffusion.py``) models the same density far better in 256 dimensions. It is not the prior of
the ELBO: the likelihood bounds stay those of the trained model. The mixtures are scikit-learn's
``GaussianMixture``; sampling is re-implemented in torch only so that it follows the seeded torch
generator of the rest of sampling.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import PipelineError


class ClassGMM:
    """Per-class full-covariance Gaussian mixtures over the latent space."""

    def __init__(self, weights: np.ndarray, means: np.ndarray, covariances: np.ndarray):
        self.weights = torch.as_tensor(weights, dtype=torch.float64)  # [C, K]
        self.means = torch.as_tensor(means, dtype=torch.float32)  # [C, K, D]
        self.covariances = torch.as_tensor(covariances, dtype=torch.float64)  # [C, K, D, D]
        self.cholesky = torch.linalg.cholesky(self.covariances).float()

    @classmethod
    def fit(cls, latents: np.ndarray, labels: np.ndarray, num_classes: int, components: int, seed: int = 0) -> ClassGMM:
        from sklearn.mixture import GaussianMixture

        weights, means, covariances = [], [], []
        for c in range(num_classes):
            z = latents[labels == c]
            if len(z) < components:
                raise PipelineError(
                    f"class {c} has {len(z)} encoded images, fewer than prior.gmm_components="
                    f"{components}; lower prior.gmm_components"
                )
            gmm = GaussianMixture(components, covariance_type="full", reg_covar=1e-4, random_state=seed).fit(z)
            weights.append(gmm.weights_)
            means.append(gmm.means_)
            covariances.append(gmm.covariances_)
        return cls(np.stack(weights), np.stack(means), np.stack(covariances))

    def sample(
        self, labels: torch.Tensor, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """z from the mixture of each label's class; ``temperature`` scales the components' spread."""
        device = labels.device
        weights = self.weights.to(device)[labels]
        gen_device = generator.device if generator is not None else device
        component = torch.multinomial(weights.to(gen_device), 1, generator=generator).squeeze(1).to(device)
        means = self.means.to(device)[labels, component]
        chol = self.cholesky.to(device)[labels, component]
        eps = torch.randn(means.shape, generator=generator, device=gen_device).to(device)
        return means + temperature * (chol @ eps.unsqueeze(-1)).squeeze(-1)
