"""``resnet``: residual encoder/decoder with conditional group normalisation.

Resolution 32 -> 16 -> 8 -> 4 with width, 2*width, 4*width channels and
``blocks`` pre-activation residual blocks per resolution (16 and 8). The class
label is a learned embedding whose FiLM scale/shift replaces the affine part
of every GroupNorm (``film``, the default), in encoder and decoder alike; with
``concat`` the one-hot label is appended to the input planes and to z instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import BaseCVAE
from .layers import CondGroupNorm, ResBlock, label_planes, one_hot
from .likelihoods import Likelihood


class ResNetCVAE(BaseCVAE):
    def __init__(self, num_classes: int, latent_dim: int, likelihood: Likelihood, width: int = 32,
                 conditioning: str = "film", embed_dim: int = 64, blocks: int = 1, **latent):
        super().__init__(num_classes, latent_dim, likelihood, **latent)
        self.conditioning = conditioning
        film = conditioning == "film"
        cond = embed_dim if film else None
        extra = 0 if film else num_classes
        c1, c2, c3 = width, 2 * width, 4 * width
        self.top = c3
        if film:
            self.embed = nn.Embedding(num_classes, embed_dim)
        # encoder: 32 (stem) -> 16 -> 8 -> 4
        self.stem = nn.Conv2d(3 + extra, c1, 3, padding=1)
        self.down1 = nn.Conv2d(c1, c2, 4, stride=2, padding=1)
        self.enc16 = nn.ModuleList(ResBlock(c2, cond) for _ in range(blocks))
        self.down2 = nn.Conv2d(c2, c3, 4, stride=2, padding=1)
        self.enc8 = nn.ModuleList(ResBlock(c3, cond) for _ in range(blocks))
        self.enc_norm = CondGroupNorm(c3, cond)
        self.down3 = nn.Conv2d(c3, c3, 4, stride=2, padding=1)
        self.enc_out = nn.Linear(c3 * 16 + extra, self.encoder_outputs)
        # decoder: 4 -> 8 -> 16 -> 32
        self.dec_in = nn.Linear(latent_dim + extra, c3 * 16)
        self.up1 = nn.ConvTranspose2d(c3, c3, 4, stride=2, padding=1)
        self.dec8 = nn.ModuleList(ResBlock(c3, cond) for _ in range(blocks))
        self.up2 = nn.ConvTranspose2d(c3, c2, 4, stride=2, padding=1)
        self.dec16 = nn.ModuleList(ResBlock(c2, cond) for _ in range(blocks))
        self.up3 = nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1)
        self.out_norm = CondGroupNorm(c1, cond)
        self.out = nn.Conv2d(c1, self.decoder_channels, 3, padding=1)

    def _embed(self, y):
        return self.embed(y) if self.conditioning == "film" else None

    def encode(self, x, y):
        e = self._embed(y)
        if e is None:
            x = torch.cat([x, label_planes(y, self.num_classes, *x.shape[2:])], dim=1)
        h = self.down1(F.silu(self.stem(x)))
        for block in self.enc16:
            h = block(h, e)
        h = self.down2(h)
        for block in self.enc8:
            h = block(h, e)
        h = self.down3(F.silu(self.enc_norm(h, e))).flatten(1)
        if e is None:
            h = torch.cat([h, one_hot(y, self.num_classes)], dim=1)
        return self.posterior_from(self.enc_out(h))

    def decode(self, z, y):
        e = self._embed(y)
        if e is None:
            z = torch.cat([z, one_hot(y, self.num_classes)], dim=1)
        h = self.up1(F.silu(self.dec_in(z)).view(-1, self.top, 4, 4))
        for block in self.dec8:
            h = block(h, e)
        h = self.up2(h)
        for block in self.dec16:
            h = block(h, e)
        h = self.up3(h)
        return self.out(F.silu(self.out_norm(h, e)))
