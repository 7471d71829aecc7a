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
from .samples import SampleSet

#: what the images of ``decoder_output`` are, as said in the metrics and the MLflow run
DECODER_OUTPUT_MEANING = {"mean": "decoder mean", "sample": "draw from the likelihood"}


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
) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` images of every class, class-major order: (uint8 [N,3,32,32], int64 [N]).
    ``latents``: draw z from this instead of the model's prior (an ex-post ``ClassGMM``)."""
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    chunks = []
    for start in tqdm(
        range(0, len(labels), batch_size), desc="sample", unit="batch", mininterval=2.0, disable=not progress
    ):
        batch = labels[start : start + batch_size].to(device)
        chunks.append(
            to_uint8(
                model.sample(
                    batch, temperature=temperature, generator=generator, latents=latents, decoder_output=decoder_output
                )
            )
        )
    return np.concatenate(chunks), labels.numpy().astype(np.int64)


@torch.no_grad()
def reconstruct_set(
    model: BaseCVAE, images: np.ndarray, labels: np.ndarray, batch_size: int = 500, progress: bool = True
) -> np.ndarray:
    """The decoder mean at the posterior's central latent of every image, uint8 like ``generate``'s.

    Their FID against the reference (``evaluate.reconstruction_fid``) tells the decoder's share of a
    sample FID from the latents': samples can only be as good as what the decoder makes of the
    latents it was trained on, so a better prior or ex-post density cannot bring the sample FID much
    below it — only a better decoder can.
    """
    model.eval()
    device = next(model.parameters()).device
    batches = BatchStream(images, labels, batch_size, device, shuffle=False)
    chunks = [
        to_uint8(model.reconstruct(x, y))
        for x, y in tqdm(batches, desc="reconstruct", unit="batch", mininterval=2.0, disable=not progress)
    ]
    return np.concatenate(chunks)


def grid_of(images: np.ndarray, labels: np.ndarray, num_classes: int, per_row: int = 10):
    """A PIL grid with one row per class, the first ``per_row`` samples of each."""
    from PIL import Image
    from torchvision.utils import make_grid

    rows = [images[labels == c][:per_row] for c in range(num_classes)]
    tensor = torch.from_numpy(np.concatenate(rows)).float() / 255
    grid = make_grid(tensor, nrow=per_row, padding=2, pad_value=1.0)
    return Image.fromarray((grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def draw_sample_set(model: BaseCVAE, classes: list[str], cfg, prepared_dir) -> tuple[SampleSet, object | None]:
    """The ``sample`` stage's set under ``cfg`` (``SampleParams``), and the latent GMM it fitted (or None).

    With ``cfg.latents == "gmm"`` the per-class mixtures are fitted here, on the encoded training split."""
    from .data.prepared import load_prepared
    from .expost import ClassGMM, encode_dataset

    gmm = None
    if cfg.latents == "gmm":
        train = load_prepared(prepared_dir, "train")
        latents = encode_dataset(model, train.images, train.labels, cfg.batch_size)
        gmm = ClassGMM.fit(latents, train.labels, len(classes), cfg.gmm_components, cfg.seed)
        print(f"fitted {cfg.gmm_components}-component GMMs per class on {len(latents)} encoded training images")
    images, labels = generate(
        model,
        len(classes),
        cfg.per_class,
        cfg.temperature,
        cfg.seed,
        cfg.batch_size,
        latents=gmm,
        decoder_output=cfg.decoder_output,
    )
    sampling = {
        "latents": "model prior" if gmm is None else f"ex-post GMM ({cfg.gmm_components} per class)",
        "images": DECODER_OUTPUT_MEANING[cfg.decoder_output],
        "temperature": cfg.temperature,
    }
    return SampleSet(images, labels, list(classes), sampling), gmm
