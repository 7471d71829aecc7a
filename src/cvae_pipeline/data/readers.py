"""Recognise an extracted CIFAR-10 tree and decode it into uint8 arrays.

Two layouts are read:

* ``image-folders``: ``train/<class>/*.jpg`` and ``test/<class>/*.jpg`` (the
  offline mirror; any folder of 32x32 images per class works, e.g. your own
  copy), indexed with torchvision's ``find_classes``/``make_dataset`` — the
  same rules ``ImageFolder`` applies — and decoded with Pillow;
* ``python-batches``: the official ``cifar-10-batches-py`` pickles, read with
  ``torchvision.datasets.CIFAR10``, which also checks each batch file's md5.

Either may sit at the top of the tree or one or two folders below it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..errors import ArchiveError, DatasetError

IMAGE_SIZE = 32
SPLITS = ("train", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass(frozen=True)
class Layout:
    kind: str  # "image-folders" | "python-batches"
    root: Path  # folder holding train/ + test/, or the batch files


@dataclass
class Split:
    images: np.ndarray  # uint8 [N, 3, 32, 32]
    labels: np.ndarray  # int64 [N]


@dataclass
class DecodedDataset:
    classes: list[str]
    splits: dict[str, Split]
    layout: str = ""


def _is_image_folders(folder: Path) -> bool:
    return all((folder / s).is_dir() and any(p.is_dir() for p in (folder / s).iterdir()) for s in SPLITS)


def _is_python_batches(folder: Path) -> bool:
    return (folder / "data_batch_1").is_file() and (folder / "test_batch").is_file()


def detect_layout(root: Path, max_depth: int = 2) -> Layout:
    """Find a known layout at ``root`` or up to ``max_depth`` folders below it."""
    frontier = [Path(root)]
    for _ in range(max_depth + 1):
        next_frontier = []
        for folder in sorted(frontier):
            if _is_image_folders(folder):
                return Layout("image-folders", folder)
            if _is_python_batches(folder):
                return Layout("python-batches", folder)
            next_frontier.extend(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        frontier = next_frontier
    raise ArchiveError(
        f"{root}: unknown dataset layout: expected train/<class>/*.jpg and test/<class>/*.jpg "
        "class folders, or CIFAR-10 python batches (data_batch_1..5, test_batch, batches.meta)"
    )


def _decode_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            array = np.asarray(img.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot decode image ({exc}); the archive is damaged") from None
    if array.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise DatasetError(
            f"{path}: image is {array.shape[1]}x{array.shape[0]}, expected {IMAGE_SIZE}x{IMAGE_SIZE}"
        )
    return array


def read_image_folders(root: Path) -> DecodedDataset:
    from torchvision.datasets.folder import find_classes, make_dataset

    classes, class_to_idx = find_classes(str(root / "train"))
    test_classes, _ = find_classes(str(root / "test"))
    if test_classes != classes:
        raise DatasetError(
            f"{root}: train and test class folders differ: train {classes}, test {test_classes}"
        )
    splits = {}
    for split in SPLITS:
        try:
            samples = make_dataset(str(root / split), class_to_idx, extensions=IMAGE_EXTENSIONS)
        except FileNotFoundError as exc:
            raise DatasetError(f"{root / split}: {exc}") from None
        images = np.empty((len(samples), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        labels = np.empty(len(samples), dtype=np.int64)
        for i, (path, label) in enumerate(tqdm(samples, desc=f"decode {split}", unit="img", mininterval=1.0)):
            images[i] = _decode_image(Path(path))
            labels[i] = label
        splits[split] = Split(np.ascontiguousarray(images.transpose(0, 3, 1, 2)), labels)
    return DecodedDataset(classes, splits)


def read_python_batches(root: Path) -> DecodedDataset:
    from torchvision.datasets import CIFAR10

    # CIFAR10 expects <root>/cifar-10-batches-py; it verifies every batch's md5.
    parent, folder = root.parent, root.name
    if folder != CIFAR10.base_folder:
        raise ArchiveError(f"{root}: python batches must sit in a folder named {CIFAR10.base_folder}")
    splits = {}
    classes: list[str] = []
    for split in SPLITS:
        try:
            ds = CIFAR10(str(parent), train=(split == "train"), download=False)
        except RuntimeError as exc:  # torchvision's "Dataset not found or corrupted"
            raise ArchiveError(f"{root}: {exc}") from None
        images = np.ascontiguousarray(np.asarray(ds.data, dtype=np.uint8).transpose(0, 3, 1, 2))
        splits[split] = Split(images, np.asarray(ds.targets, dtype=np.int64))
        classes = list(ds.classes)
    return DecodedDataset(classes, splits)


def read_dataset(root: Path) -> DecodedDataset:
    """Detect the layout under ``root`` and decode both splits."""
    layout = detect_layout(root)
    reader = read_image_folders if layout.kind == "image-folders" else read_python_batches
    dataset = reader(layout.root)
    dataset.layout = layout.kind
    return dataset
