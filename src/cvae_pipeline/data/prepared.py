"""The prepared dataset on disk: uint8 ``.npy`` arrays + labels + class names.

``.npy`` is chosen because ``np.load(mmap_mode="r")`` opens 45,000 CIFAR
images in milliseconds and training reads whole batches from it by index, with
no per-image decoding on the hot path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import PrepareParams
from ..errors import DatasetError, reading
from ..io import atomic_directory
from .readers import IMAGE_SIZE, DecodedDataset, Split
from .splits import stratified_split, stratified_subset

PREPARED_SPLITS = ("train", "val", "test")
CLASSES_FILE = "classes.json"


@dataclass
class PreparedSplit:
    images: np.ndarray  # uint8 [N, 3, 32, 32] (memory-mapped when loaded)
    labels: np.ndarray  # int64 [N]
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)


def validate_split(name: str, split: Split, num_classes: int) -> None:
    """Shapes, dtypes, label range and that every class is present."""
    images, labels = split.images, split.labels
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (3, IMAGE_SIZE, IMAGE_SIZE):
        raise DatasetError(f"{name}: images are {images.dtype}{list(images.shape)}, expected uint8[N,3,32,32]")
    if labels.shape != (len(images),):
        raise DatasetError(f"{name}: {len(labels)} labels for {len(images)} images")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetError(f"{name}: labels span {labels.min()}..{labels.max()}, expected 0..{num_classes - 1}")
    counts = np.bincount(labels, minlength=num_classes)
    if (counts == 0).any():
        missing = [int(c) for c in np.flatnonzero(counts == 0)]
        raise DatasetError(f"{name}: classes {missing} have no images; every class must be present")


def make_splits(dataset: DecodedDataset, params: PrepareParams) -> dict[str, Split]:
    """Carve the validation split from the full train set, then apply the subsets."""
    train, test = dataset.splits["train"], dataset.splits["test"]
    kept, held = stratified_split(train.labels, params.val_fraction, params.seed)
    val = Split(train.images[held], train.labels[held])
    train = Split(train.images[kept], train.labels[kept])
    if params.train_subset is not None:
        idx = stratified_subset(train.labels, params.train_subset, params.seed, "prepare.train_subset")
        train = Split(train.images[idx], train.labels[idx])
    if params.test_subset is not None:
        idx = stratified_subset(test.labels, params.test_subset, params.seed, "prepare.test_subset")
        test = Split(test.images[idx], test.labels[idx])
    splits = {"train": train, "val": val, "test": test}
    for name, split in splits.items():
        validate_split(name, split, len(dataset.classes))
    return splits


def channel_stats(images: np.ndarray, chunk: int = 8192) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1], accumulated in float64 chunk by chunk."""
    total = np.zeros(3)
    total_sq = np.zeros(3)
    count = 0
    for start in range(0, len(images), chunk):
        block = images[start : start + chunk].astype(np.float64) / 255.0
        total += block.sum(axis=(0, 2, 3))
        total_sq += (block**2).sum(axis=(0, 2, 3))
        count += block.shape[0] * block.shape[2] * block.shape[3]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return mean.tolist(), std.tolist()


def dataset_facts(splits: dict[str, Split], classes: list[str]) -> dict:
    """Counts per class and split and train channel statistics, for ``dvc metrics show``."""
    facts: dict = {"num_classes": len(classes)}
    for name, split in splits.items():
        counts = np.bincount(split.labels, minlength=len(classes))
        facts[name] = {"images": int(len(split.labels)), "per_class": dict(zip(classes, map(int, counts)))}
    mean, std = channel_stats(splits["train"].images)
    facts["train_channel_mean"] = dict(zip("rgb", mean))
    facts["train_channel_std"] = dict(zip("rgb", std))
    return facts


def save_prepared(out_dir: Path, splits: dict[str, Split], classes: list[str], manifest: dict) -> None:
    """Write all arrays atomically: ``out_dir`` appears complete or not at all."""
    with atomic_directory(out_dir) as tmp:
        for name, split in splits.items():
            np.save(tmp / f"{name}_images.npy", np.ascontiguousarray(split.images))
            np.save(tmp / f"{name}_labels.npy", split.labels.astype(np.int64))
        (tmp / CLASSES_FILE).write_text(json.dumps(classes, indent=2) + "\n")
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def load_prepared(prepared_dir: str | Path, split: str, mmap: bool = True) -> PreparedSplit:
    """Open one split; memory-mapped by default (loads in milliseconds)."""
    prepared_dir = Path(prepared_dir)
    if split not in PREPARED_SPLITS:
        raise DatasetError(f"unknown split '{split}'; expected one of {', '.join(PREPARED_SPLITS)}")
    paths = [prepared_dir / f"{split}_images.npy", prepared_dir / f"{split}_labels.npy", prepared_dir / CLASSES_FILE]
    for path in paths:
        if not path.is_file():
            raise DatasetError(f"{path}: missing; run `dvc repro prepare` first")
    with reading(paths[0]):
        images = np.load(paths[0], mmap_mode="r" if mmap else None)
    with reading(paths[1]):
        labels = np.load(paths[1])
    with reading(paths[2]):
        classes = json.loads(paths[2].read_text())
    if images.ndim != 4 or len(labels) != len(images) or not isinstance(classes, list):
        raise DatasetError(
            f"{prepared_dir}: {split} images {list(images.shape)} with {len(labels)} labels and classes {classes!r} "
            "do not belong together; re-create them with `dvc repro -f prepare`"
        )
    return PreparedSplit(images, labels, classes)
