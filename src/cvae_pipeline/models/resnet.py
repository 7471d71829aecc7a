"""``resnet``: residual encoder/decoder with conditional group normalisation.

Resolution 32 -> 16 -> 8 -> 4 with width, 2*width, 4*width channels and
``blocks`` pre-activation residual blocks per resolution (16 and 8). The class
label is a learned embedding whose FiLM scale/shift replaces the affine part
of every GroupNorm (``film``, the default), in encoder and decoder alike; with
``concat`` the one-hot label is appended to the input planes and to z instead.

``latent_resolution`` 1 makes z a vector (a linear layer to and from the 4x4
maps); 4 or 8 makes z a map of ``latent_dim / r^2`` channels at r x r, read and
written by 3x3 convolutions at that resolution. Why: with a vector z the decoder
must rebuild every location from one global code, and the decoder probes showed
its reconstructions stay blurry whatever the KL weight or width; a latent map
hands it local information, as in the spatial latents of NVAE and VQ-VAE.
z stays a flat [B, latent_dim] tensor (channel-major), so flows, priors and
the ex-post GMM work unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import BaseCVAE
from .layers import CondGroupNorm, ResBlock, label_planes, one_hot
from .likelihoods import Likelihood


class ResNetCVAE(BaseCVAE):
    def __init__(
        self,
        num_classes: int,
        latent_dim: int,
        likelihood: Likelihood,
        width: int = 32,
        conditioning: str = "film",
        embed_dim: int = 64,
        blocks: int = 1,
        latent_resolution: int = 1,
        **latent,
    ):
        super().__init__(num_classes, latent_dim, likelihood, **latent)
        self.conditioning = conditioning
        film = conditioning == "film"
        cond = embed_dim if film else None
        extra = 0 if film else num_classes
        c1, c2, c3 = width, 2 * width, 4 * width
        self.top = c3
        r = self.latent_resolution = latent_resolution
        if latent_dim % (r * r) or self.encoder_outputs % (r * r):
            raise ValueError(f"latent_dim {latent_dim} is not a whole number of {r}x{r} channels")
        self.latent_channels = latent_dim // (r * r)
        if r > 1:
            self.latent_shape = (self.latent_channels, r, r)
        if film:
            self.embed = nn.Embedding(num_classes, embed_dim)
        # encoder: 32 (stem) -> 16 -> 8 -> 4
        self.stem = nn.Conv2d(3 + extra, c1, 3, padding=1)
        self.down1 = nn.Conv2d(c1, c2, 4, stride=2, padding=1)
        self.enc16 = nn.ModuleList(ResBlock(c2, cond) for _ in range(blocks))
        self.down2 = nn.Conv2d(c2, c3, 4, stride=2, padding=1)
        self.enc8 = nn.ModuleList(ResBlock(c3, cond) for _ in range(blocks))
        self.enc_norm = CondGroupNorm(c3, cond)
        if r == 8:  # the latent map is read off the 8x8 features
            self.enc_out = nn.Conv2d(c3 + extra, self.encoder_outputs // 64, 3, padding=1)
        else:
            self.down3 = nn.Conv2d(c3, c3, 4, stride=2, padding=1)
            self.enc_out = (
                nn.Conv2d(c3 + extra, self.encoder_outputs // 16, 3, padding=1)
                if r == 4
                else nn.Linear(c3 * 16 + extra, self.encoder_outputs)
            )
        # decoder: (z) -> 4 -> 8 -> 16 -> 32, or a latent map entering at its own resolution
        if r == 1:
            self.dec_in = nn.Linear(latent_dim + extra, c3 * 16)
        else:
            self.dec_in = nn.Conv2d(self.latent_channels + extra, c3, 3, padding=1)
        if r != 8:
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
        h = F.silu(self.enc_norm(h, e))
        r = self.latent_resolution
        if r != 8:
            h = self.down3(h)
        if r == 1:
            h = h.flatten(1)
            if e is None:
                h = torch.cat([h, one_hot(y, self.num_classes)], dim=1)
            return self.posterior_from(self.enc_out(h))
        if e is None:
            h = torch.cat([h, label_planes(y, self.num_classes, r, r)], dim=1)
        # [B, 2*C_z + C_ctx, r, r] flattened channel-major splits into mu, logvar, context maps
        return self.posterior_from(self.enc_out(h).flatten(1))

    def decode(self, z, y):
        e = self._embed(y)
        r = self.latent_resolution
        if r == 1:
            if e is None:
                z = torch.cat([z, one_hot(y, self.num_classes)], dim=1)
            h = F.silu(self.dec_in(z)).view(-1, self.top, 4, 4)
        else:
            z = z.view(-1, self.latent_channels, r, r)
            if e is None:
                z = torch.cat([z, label_planes(y, self.num_classes, r, r)], dim=1)
            h = F.silu(self.dec_in(z))
        if r != 8:
            h = self.up1(h)
        for block in self.dec8:
            h = block(h, e)
        h = self.up2(h)
        for block in self.dec16:
            h = block(h, e)
        h = self.up3(h)
        return self.out(F.silu(self.out_norm(h, e)))
