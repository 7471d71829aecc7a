"""``conv``: a DCGAN-style convolutional encoder/decoder for 32x32 images.

Three stride-2 convolutions (32 -> 16 -> 8 -> 4) with width, 2*width and
4*width channels, mirrored by transposed convolutions in the decoder. Labels
enter as one-hot planes on the input and one-hot next to z (``concat``), or as
a learned embedding that FiLM-modulates every block (``film``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import BaseCVAE
from .layers import FiLM, groups_for, label_planes, one_hot
from .likelihoods import Likelihood


class ConvCVAE(BaseCVAE):
    def __init__(
        self,
        num_classes: int,
        latent_dim: int,
        likelihood: Likelihood,
        width: int = 64,
        conditioning: str = "film",
        embed_dim: int = 64,
        **latent,
    ):
        super().__init__(num_classes, latent_dim, likelihood, **latent)
        self.conditioning = conditioning
        film = conditioning == "film"
        extra = 0 if film else num_classes
        chans = [width, 2 * width, 4 * width]
        self.top = chans[-1]
        self.enc_convs = nn.ModuleList()
        self.enc_norms = nn.ModuleList()
        c_in = 3 + extra
        for c in chans:
            self.enc_convs.append(nn.Conv2d(c_in, c, 4, stride=2, padding=1))
            self.enc_norms.append(nn.GroupNorm(groups_for(c), c))
            c_in = c
        self.enc_out = nn.Linear(self.top * 16 + extra, self.encoder_outputs)
        self.dec_in = nn.Linear(latent_dim + extra, self.top * 16)
        self.dec_convs = nn.ModuleList()
        self.dec_norms = nn.ModuleList()
        for c_in, c in zip(chans[::-1], chans[::-1][1:]):
            self.dec_norms.append(nn.GroupNorm(groups_for(c_in), c_in))
            self.dec_convs.append(nn.ConvTranspose2d(c_in, c, 4, stride=2, padding=1))
        self.dec_norms.append(nn.GroupNorm(groups_for(chans[0]), chans[0]))
        self.dec_convs.append(nn.ConvTranspose2d(chans[0], self.decoder_channels, 4, stride=2, padding=1))
        if film:
            self.embed = nn.Embedding(num_classes, embed_dim)
            self.enc_films = nn.ModuleList(FiLM(embed_dim, c) for c in chans)
            self.dec_films = nn.ModuleList(FiLM(embed_dim, c) for c in chans[::-1])

    def encode(self, x, y):
        film = self.conditioning == "film"
        e = self.embed(y) if film else None
        h = x if film else torch.cat([x, label_planes(y, self.num_classes, *x.shape[2:])], dim=1)
        for i, (conv, norm) in enumerate(zip(self.enc_convs, self.enc_norms)):
            h = norm(conv(h))
            h = F.silu(self.enc_films[i](h, e) if film else h)
        h = h.flatten(1)
        if not film:
            h = torch.cat([h, one_hot(y, self.num_classes)], dim=1)
        return self.posterior_from(self.enc_out(h))

    def decode(self, z, y):
        film = self.conditioning == "film"
        e = self.embed(y) if film else None
        h = self.dec_in(z if film else torch.cat([z, one_hot(y, self.num_classes)], dim=1))
        h = h.view(-1, self.top, 4, 4)
        for i, (norm, conv) in enumerate(zip(self.dec_norms, self.dec_convs)):
            h = norm(h)
            h = F.silu(self.dec_films[i](h, e) if film else h)
            h = conv(h)
        return h
