"""``mlp``: the classic CVAE of the original write-up, its defects fixed.

Encoder: [x (3072) ; one-hot y (10)] -> width -> (mu, logvar); decoder:
[z ; one-hot y] -> width -> 3072 (-> sigmoid under the Bernoulli likelihood),
trained on BCE + KL. The original concatenated integer labels and fed BCE
targets in [-1, 1]; here labels are one-hot and images are in [0, 1]. With
``conditioning: film`` the label instead modulates the hidden layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import IMAGE_DIM, IMAGE_PIXELS, IMAGE_SHAPE, BaseCVAE, Posterior
from .layers import FiLM, one_hot
from .likelihoods import Likelihood


class MLPCVAE(BaseCVAE):
    def __init__(
        self,
        num_classes: int,
        latent_dim: int,
        likelihood: Likelihood,
        width: int = 128,
        conditioning: str = "concat",
        **latent,
    ):
        super().__init__(num_classes, latent_dim, likelihood, **latent)
        self.conditioning = conditioning
        concat = num_classes if conditioning == "concat" else 0
        self.enc_hidden = nn.Linear(IMAGE_DIM + concat, width)
        self.enc_mu = nn.Linear(width, latent_dim)
        self.enc_logvar = nn.Linear(width, latent_dim)
        self.enc_context = nn.Linear(width, self.context_dim) if self.context_dim else None
        self.dec_hidden = nn.Linear(latent_dim + concat, width)
        self.dec_out = nn.Linear(width, IMAGE_PIXELS * likelihood.out_channels)
        if conditioning == "film":
            self.embed = nn.Embedding(num_classes, width)
            self.enc_film = FiLM(width, width)
            self.dec_film = FiLM(width, width)

    def _hidden(self, layer: nn.Linear, film: str, inputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.conditioning == "concat":
            return F.relu(layer(torch.cat([inputs, one_hot(y, self.num_classes)], dim=1)))
        return F.relu(getattr(self, film)(layer(inputs), self.embed(y)))

    def encode(self, x, y):
        h = self._hidden(self.enc_hidden, "enc_film", x.flatten(1), y)
        context = self.enc_context(h) if self.enc_context is not None else None
        return Posterior(self.enc_mu(h), self.enc_logvar(h), context)

    def decode(self, z, y):
        h = self._hidden(self.dec_hidden, "dec_film", z, y)
        return self.dec_out(h).view(-1, self.decoder_channels, *IMAGE_SHAPE[1:])
