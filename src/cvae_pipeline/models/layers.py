"""Building blocks shared by the convolutional backbones: label conditioning and residual blocks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def one_hot(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    return F.one_hot(y.long(), num_classes).float()


def label_planes(y: torch.Tensor, num_classes: int, height: int, width: int) -> torch.Tensor:
    """One-hot labels broadcast to constant image planes, [B, C, H, W] (for input concatenation)."""
    return one_hot(y, num_classes)[:, :, None, None].expand(-1, -1, height, width)


def groups_for(channels: int) -> int:
    for g in (32, 16, 8, 4, 2):
        if channels % g == 0 and channels // g >= 2:
            return g
    return 1


class FiLM(nn.Module):
    """Feature-wise linear modulation: h * (1 + gamma(e)) + beta(e), initialised to identity."""

    def __init__(self, cond_dim: int, channels: int):
        super().__init__()
        self.proj = nn.Linear(cond_dim, 2 * channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.proj(e).chunk(2, dim=1)
        shape = (h.shape[0], -1) + (1,) * (h.dim() - 2)
        return h * (1 + gamma.view(shape)) + beta.view(shape)


class CondGroupNorm(nn.Module):
    """GroupNorm whose scale and shift come from the class embedding (conditional normalisation),
    or plain affine GroupNorm when ``cond_dim`` is None."""

    def __init__(self, channels: int, cond_dim: int | None):
        super().__init__()
        self.norm = nn.GroupNorm(groups_for(channels), channels, affine=cond_dim is None)
        self.film = FiLM(cond_dim, channels) if cond_dim else None

    def forward(self, h: torch.Tensor, e: torch.Tensor | None) -> torch.Tensor:
        h = self.norm(h)
        return self.film(h, e) if self.film is not None else h


class ResBlock(nn.Module):
    """Pre-activation residual block: (CondGN, SiLU, conv3x3) x 2 plus identity skip."""

    def __init__(self, channels: int, cond_dim: int | None):
        super().__init__()
        self.norm1 = CondGroupNorm(channels, cond_dim)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = CondGroupNorm(channels, cond_dim)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity: stable deep training
        nn.init.zeros_(self.conv2.bias)

    def forward(self, h: torch.Tensor, e: torch.Tensor | None) -> torch.Tensor:
        r = self.conv1(F.silu(self.norm1(h, e)))
        r = self.conv2(F.silu(self.norm2(r, e)))
        return h + r
