"""Test-set likelihood bounds and reconstruction quality of a trained CVAE.

* negative ELBO (one posterior sample per image) and the importance-weighted
  bound with K samples (Burda et al. 2016), which is tighter: -log p(x|y) <= IW <= ELBO;
* in bits/dim when the likelihood is a probability of the 8-bit image
  (``Likelihood.discrete``), otherwise in nats/image — a Bernoulli or
  continuous Gaussian density of [0,1] pixels is not a probability of the
  image, so calling it bits/dim would flatter the model;
* reconstruction MSE (pixels in [0, 1]) and PSNR of the decoder mean at the posterior mean.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from tqdm import tqdm

from ..batches import BatchStream
from ..models import BaseCVAE

DIMS = 3 * 32 * 32


@torch.no_grad()
def likelihood_metrics(
    model: BaseCVAE,
    images: np.ndarray,
    labels: np.ndarray,
    iw_samples: int,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> dict:
    model = model.to(device).eval()
    torch.manual_seed(seed)
    elbo_sum = iw_sum = mse_sum = psnr_sum = 0.0
    n = len(labels)
    batches = BatchStream(images, labels, batch_size, torch.device(device), shuffle=False)
    for x, y in tqdm(batches, desc="test likelihood", unit="batch", mininterval=2.0):
        log_w = model.log_importance_weights(x, y, max(1, iw_samples))  # [K, B]
        elbo_sum += (-log_w[0]).sum().item()
        iw_sum += (-(torch.logsumexp(log_w, 0) - math.log(log_w.shape[0]))).sum().item()
        recon = model.reconstruct(x, y)
        mse = (recon - x).pow(2).flatten(1).mean(1).clamp(min=1e-10)
        mse_sum += mse.sum().item()
        psnr_sum += (10 * torch.log10(1.0 / mse)).sum().item()
    neg_elbo, neg_iw = elbo_sum / n, iw_sum / n
    out = {"recon_mse": mse_sum / n, "recon_psnr_db": psnr_sum / n, "iw_samples": iw_samples}
    if model.likelihood.discrete:
        scale = 1.0 / (DIMS * math.log(2))
        out.update(test_neg_elbo_bits_per_dim=neg_elbo * scale, test_iw_bound_bits_per_dim=neg_iw * scale)
    else:
        out.update(test_neg_elbo_nats=neg_elbo, test_iw_bound_nats=neg_iw)
    return out
