"""Generate a labelled sample set from a trained CVAE, as uint8 images (what an image file holds).

Quantising to uint8 before measuring keeps FID comparable with pytorch-fid
run on saved PNGs of the same samples.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from .batches import BatchStream
from .models import BaseCVAE
from .models.base import LatentSampler
from .precision import FP32, Precision

#: white pixels between and around the tiles of a sample grid
GRID_PADDING = 2


def to_uint8(images: torch.Tensor) -> np.ndarray:
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


@torch.no_grad()
def generate(
    model: BaseCVAE,
    num_classes: int,
    per_class: int,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 500,
    progress: bool = True,
    latents: LatentSampler | None = None,
    decoder_output: str = "mean",
    precision: Precision = FP32,
) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` images of every class, class-major order: (uint8 [N,3,32,32], int64 [N]).
    ``latents``: draw z from this instead of the model's prior (a fitted prior's sampler); ``precision``:
    what the prior's steps and the decoder compute in (``sample.precision``)."""
    precision.module(model).eval()
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    chunks = []
    for start in tqdm(
        range(0, len(labels), batch_size), desc="sample", unit="batch", mininterval=2.0, disable=not progress
    ):
        batch = labels[start : start + batch_size].to(device)
        with precision.autocast(device):
            images = model.sample(
                batch, temperature=temperature, generator=generator, latents=latents, decoder_output=decoder_output
            )
        chunks.append(to_uint8(images))
    return np.concatenate(chunks), labels.numpy().astype(np.int64)


@torch.no_grad()
def reconstruct_set(
    model: BaseCVAE,
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int = 500,
    progress: bool = True,
    posterior_draws: bool = False,
    seed: int = 0,
) -> np.ndarray:
    """The decoder mean at the posterior's central latent of every image — or, with ``posterior_draws``,
    at a draw z ~ q(z|x, y) (seeded) — uint8 like ``generate``'s.

    Their FIDs against the reference (``evaluate.reconstruction_fid``) are the floor of the sample FID:
    a prior trained on these encodings at best reproduces the posterior draws' distribution, so its
    samples cannot score better than the draws' decodes; the means' decodes show what the decoder
    makes of its cleanest inputs. Only a better decoder or encoder moves them.
    """
    model.eval()
    device = next(model.parameters()).device
    batches = BatchStream(images, labels, batch_size, device, shuffle=False)
    what = "decode posterior draws" if posterior_draws else "reconstruct"
    chunks = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for x, y in tqdm(batches, desc=what, unit="batch", mininterval=2.0, disable=not progress):
            if posterior_draws:
                z, _ = model.draw_latent(model.encode(x, y))
                chunks.append(to_uint8(model.likelihood.mean(model.decode(z, y))))
            else:
                chunks.append(to_uint8(model.reconstruct(x, y)))
    return np.concatenate(chunks)


def grid_of(images: np.ndarray, labels: np.ndarray, num_classes: int, per_row: int = 10):
    """A PIL grid with one row per class, the first ``per_row`` uint8 samples of each, laid out as
    torchvision's ``make_grid(nrow=per_row, padding=2, pad_value=1)`` lays out two or more images
    (tested). Written out rather than imported: importing torchvision (which imports torch._dynamo)
    cost train, prior and sample ~1.5 s each on 2 cores, for what is a copy into a canvas."""
    from PIL import Image

    tiles = np.concatenate([images[labels == c][:per_row] for c in range(num_classes)])
    count, channels, height, width = tiles.shape
    columns = max(1, min(per_row, count))
    step_y, step_x = height + GRID_PADDING, width + GRID_PADDING
    canvas = np.full(
        (-(-count // columns) * step_y + GRID_PADDING, columns * step_x + GRID_PADDING, channels), 255, np.uint8
    )
    for index, tile in enumerate(tiles):
        row, column = divmod(index, columns)
        top, left = row * step_y + GRID_PADDING, column * step_x + GRID_PADDING
        canvas[top : top + height, left : left + width] = tile.transpose(1, 2, 0)
    return Image.fromarray(canvas)
