"""The training set as the prior sees it: every image's posterior q(z|x, y), encoded once.

The prior is trained on draws z ~ q(z|x, y) (fresh noise every step), not on the posterior means: the
decoder was trained on draws, and a prior fitted to the means alone would under-spread (its samples
then decode to the over-smooth "average" images of the means). Mirrored copies of the images
(``prior.augment: hflip``) double the set where the decoder treats left and right alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from ..batches import BatchStream
from ..models import BaseCVAE


@dataclass
class EncodedSet:
    """Posterior means and standard deviations, float32 [N, latent_dim], and labels int64 [N]."""

    mean: np.ndarray
    std: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@torch.no_grad()
def encode_posteriors(
    model: BaseCVAE, images: np.ndarray, labels: np.ndarray, batch_size: int = 500, hflip: bool = False
) -> EncodedSet:
    """q(z|x, y) of every image (and of its mirror image with ``hflip``).

    With a posterior flow the posterior is not Gaussian; then the central latent (through the flow)
    stands for it with std 0, and the prior learns the density of those."""
    model.eval()
    device = next(model.parameters()).device
    sets = [images, np.ascontiguousarray(images[..., ::-1])] if hflip else [images]
    means, stds = [], []
    for part, what in zip(sets, ("encode", "encode mirrored")):
        batches = BatchStream(part, labels, batch_size, device, shuffle=False)
        for x, y in tqdm(batches, desc=what, unit="batch", mininterval=2.0, leave=False):
            if model.posterior_flow is None:
                posterior = model.encode(x, y)
                means.append(posterior.mu.cpu().numpy())
                stds.append(torch.exp(0.5 * posterior.logvar).cpu().numpy())
            else:
                central = model.encode_latents(x, y).cpu().numpy()
                means.append(central)
                stds.append(np.zeros_like(central))
    return EncodedSet(
        np.concatenate(means).astype(np.float32),
        np.concatenate(stds).astype(np.float32),
        np.concatenate([labels] * len(sets)).astype(np.int64),
    )
