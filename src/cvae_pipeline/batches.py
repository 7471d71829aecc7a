"""Serve training batches straight from the prepared uint8 arrays.

The whole split lives in memory as one uint8 tensor (45,000 CIFAR images are
138 MB); a batch is one gather by shuffled indices and one conversion to
float. There is no per-image PIL or transform on the hot path, which is what
makes the project's loop several times faster than a torchvision-style
``Dataset`` + ``DataLoader`` (docs/benchmarks.md, "The training loop's data path").

The one augmentation, a random horizontal flip, is applied to the gathered batch
for the same reason: a mirrored CIFAR image is as likely as the original, and
flipping a [B,3,32,32] tensor costs nothing next to the model. torchvision's
``RandomHorizontalFlip`` works per image and would bring the per-item path back.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch


class BatchStream:
    """Iterate ``(x float [B,3,32,32] in [0,1], y int64 [B])`` over one epoch."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        device: torch.device,
        shuffle: bool = True,
        generator: torch.Generator | None = None,
        rank: int = 0,
        world_size: int = 1,
        hflip: bool = False,
    ):
        self.images = torch.from_numpy(np.array(images, dtype=np.uint8, copy=True))  # memmap -> RAM
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.batch_size = batch_size
        self.device = device
        self.shuffle = shuffle
        self.generator = generator
        # data parallel: every process draws the same permutation (same generator seed) and takes
        # every world_size-th image of it from position rank; the tail that does not divide evenly
        # is dropped so all processes take the same number of steps (DDP would hang otherwise)
        self.rank, self.world_size = rank, world_size
        # the flip coins come from ``generator`` too, so a resumed run flips exactly as an uninterrupted
        # one (the generator's state is checkpointed); a full batch of coins is drawn per step, also for
        # the shorter last batch, so the generator advances the same way on every process and epoch
        self.hflip = hflip
        if device.type == "cuda":  # pinned memory: asynchronous host-to-device copies
            self.images = self.images.pin_memory()
            self.labels = self.labels.pin_memory()

    def __len__(self) -> int:
        return (self.num_images + self.batch_size - 1) // self.batch_size

    @property
    def num_images(self) -> int:
        """Images this process sees per epoch."""
        return len(self.labels) // self.world_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n_all = len(self.labels)
        order = torch.randperm(n_all, generator=self.generator) if self.shuffle else torch.arange(n_all)
        if self.world_size > 1:
            order = order[: self.num_images * self.world_size][self.rank :: self.world_size]
        n = len(order)
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size]
            x = self.images[idx]
            if self.hflip:
                coins = torch.rand(self.batch_size, generator=self.generator)[: len(idx)] < 0.5
                x = torch.where(coins[:, None, None, None], x.flip(-1), x)
            x = x.to(self.device, non_blocking=True).float().div_(255.0)
            y = self.labels[idx].to(self.device, non_blocking=True)
            yield x, y
