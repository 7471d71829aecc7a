"""Load an image set for the ``fid``/``kid`` commands: a folder, an array file, or saved statistics.

* a folder: every image below it (searched recursively; bmp, jpg, jpeg, pgm,
  png, ppm, tif, tiff, webp — pytorch-fid's list), decoded as RGB, sorted by path;
* ``.npy``: a uint8 array ``[N,3,H,W]`` or ``[N,H,W,3]``;
* ``.npz``: either FID statistics (``mu``, ``sigma``, as ``--save-stats``
  writes them), Inception ``features`` (as the pipeline saves them), or an
  ``images`` array.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import PipelineError, reading

IMAGE_EXTENSIONS = {"bmp", "jpg", "jpeg", "pgm", "png", "ppm", "tif", "tiff", "webp"}


@dataclass
class ImageSet:
    """Exactly one of ``images`` (uint8 [N,3,H,W]), ``features`` or ``stats`` (mu, sigma) is set."""

    source: Path
    images: np.ndarray | None = None
    features: np.ndarray | None = None
    stats: tuple[np.ndarray, np.ndarray] | None = None


def _channels_first(array: np.ndarray, source: Path) -> np.ndarray:
    if array.ndim == 4 and array.shape[1] == 3:
        pass
    elif array.ndim == 4 and array.shape[-1] == 3:
        array = array.transpose(0, 3, 1, 2)
    else:
        raise PipelineError(f"{source}: expected images [N,3,H,W] or [N,H,W,3], got {list(array.shape)}")
    if array.dtype != np.uint8:
        raise PipelineError(f"{source}: expected uint8 images, got {array.dtype}")
    return np.ascontiguousarray(array)


def read_folder(folder: Path) -> np.ndarray:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS)
    if not files:
        raise PipelineError(f"{folder}: no images found (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    images = []
    for file in files:
        with reading(file), Image.open(file) as image:
            images.append(np.asarray(image.convert("RGB")))
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise PipelineError(f"{folder}: images differ in size ({sorted(shapes)[:3]} ...); resize them first")
    return np.stack(images).transpose(0, 3, 1, 2).copy()


def load_image_set(path: str | Path) -> ImageSet:
    if str(path) == "":  # Path("") is the working folder: an unset shell variable would score all below it
        raise PipelineError("an empty path was given; name a folder, .npy or .npz file")
    path = Path(path)
    if path.is_dir():
        return ImageSet(path, images=read_folder(path))
    if not path.is_file():
        raise PipelineError(f"{path}: no such folder or file")
    if path.suffix == ".npy":
        with reading(path):
            images = np.load(path)
        return ImageSet(path, images=_channels_first(images, path))
    if path.suffix == ".npz":
        with reading(path), np.load(path) as data:
            if "mu" in data and "sigma" in data:
                return ImageSet(path, stats=(data["mu"], data["sigma"]))
            if "features" in data:
                return ImageSet(path, features=data["features"])
            if "images" in data:
                return ImageSet(path, images=_channels_first(data["images"], path))
            raise PipelineError(f"{path}: expected arrays mu+sigma, features or images; found {list(data)}")
    raise PipelineError(f"{path}: not a folder, .npy or .npz")
