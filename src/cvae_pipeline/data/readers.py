"""Recognise an extracted CIFAR-10 tree and decode it into uint8 arrays.

Two layouts are read:

* ``image-folders``: ``train/<class>/*.jpg`` and ``test/<class>/*.jpg`` (the
  offline mirror; any folder of 32x32 images per class works, e.g. your own
  copy), indexed by the rules torchvision's ``ImageFolder`` applies (see
  :func:`index_image_folders`) and decoded with Pillow;
* ``python-batches``: the official ``cifar-10-batches-py`` pickles (the
  format ``torchvision.datasets.CIFAR10`` reads), unpickled with a restricted
  unpickler.

Either may sit at the top of the tree or one or two folders below it.
"""

from __future__ import annotations

import os
import pickle
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
        raise DatasetError(
            f"{path}: cannot decode image ({exc}); re-create it with `dvc repro -f download` "
            "(if that fails too, the archive itself is damaged)"
        ) from None
    if array.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise DatasetError(f"{path}: image is {array.shape[1]}x{array.shape[0]}, expected {IMAGE_SIZE}x{IMAGE_SIZE}")
    return array


def class_folders(folder: Path) -> list[str]:
    """The class names under ``folder``: its sub-folders, sorted (``ImageFolder``'s ``find_classes``)."""
    classes = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
    if not classes:
        raise DatasetError(f"{folder}: no class folders in it")
    return classes


def index_image_folders(folder: Path, classes: list[str]) -> list[tuple[str, int]]:
    """``(path, label)`` of every image under ``folder/<class>/`` (any depth, links followed), each
    class's files in sorted order: the index torchvision's ``make_dataset`` builds for ``ImageFolder``
    (a test checks the two agree). Written out rather than imported because importing torchvision
    (and with it torch) cost ``prepare``, which needs neither otherwise, ~3 s a run
    (docs/benchmarks.md, "Fixed costs of a stage process")."""
    samples = []
    for label, name in enumerate(classes):
        found = []
        for parent, _, files in sorted(os.walk(folder / name, followlinks=True)):
            found += [os.path.join(parent, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)]
        if not found:
            raise DatasetError(
                f"{folder / name}: no images in this class folder (looked for {', '.join(IMAGE_EXTENSIONS)})"
            )
        samples += [(path, label) for path in found]
    return samples


def read_image_folders(root: Path) -> DecodedDataset:
    classes = class_folders(root / "train")
    test_classes = class_folders(root / "test")
    if test_classes != classes:
        raise DatasetError(f"{root}: train and test class folders differ: train {classes}, test {test_classes}")
    splits = {}
    for split in SPLITS:
        samples = index_image_folders(root / split, classes)
        images = np.empty((len(samples), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        labels = np.empty(len(samples), dtype=np.int64)
        for i, (path, label) in enumerate(tqdm(samples, desc=f"decode {split}", unit="img", mininterval=1.0)):
            images[i] = _decode_image(Path(path))
            labels[i] = label
        splits[split] = Split(np.ascontiguousarray(images.transpose(0, 3, 1, 2)), labels)
    return DecodedDataset(classes, splits)


class _BatchUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds the numpy arrays CIFAR batches contain.

    A pickle can run arbitrary code; even from a checksum-verified archive we
    allow nothing but numpy's array reconstruction.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes; harmless
    }

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle protocol
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}")
        return super().find_class(module, name)


def _load_batch(path: Path) -> dict:
    if not path.is_file():
        raise ArchiveError(f"{path}: missing CIFAR-10 batch file")
    try:
        with open(path, "rb") as f:
            batch = _BatchUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise ArchiveError(f"{path}: not a readable CIFAR-10 batch ({exc})") from None
    if not isinstance(batch, dict):
        raise ArchiveError(f"{path}: not a CIFAR-10 batch (expected a dict, got {type(batch).__name__})")
    return batch


def read_python_batches(root: Path) -> DecodedDataset:
    """Read the official pickled batches (the format torchvision's CIFAR10 reads).

    Hand-written rather than ``torchvision.datasets.CIFAR10`` because that
    class hard-codes the md5 of every official batch file, so it cannot read a
    subset or a user's own copy in this format; the archive's own checksum
    already pins the content.
    """
    meta = _load_batch(root / "batches.meta")
    names = meta.get("label_names")
    if not isinstance(names, list) or not names or not all(isinstance(n, (str, bytes)) for n in names):
        raise ArchiveError(f"{root / 'batches.meta'}: label_names is not a list of class names")
    classes = [n.decode("latin1") if isinstance(n, bytes) else n for n in names]
    files = {"train": sorted(root.glob("data_batch_*")), "test": [root / "test_batch"]}
    splits = {}
    for split, paths in files.items():
        images, labels = [], []
        for path in paths:
            batch = _load_batch(path)
            try:
                data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE)
                batch_labels = np.asarray(batch["labels"], dtype=np.int64)
                if len(batch_labels) != len(data) or batch_labels.ndim != 1:
                    raise ValueError(f"{len(batch_labels)} labels for {len(data)} images")
            except (KeyError, ValueError, TypeError, OverflowError) as exc:  # whatever the pickle holds instead
                raise ArchiveError(f"{path}: malformed CIFAR-10 batch ({type(exc).__name__}: {exc})") from None
            images.append(data)
            labels.append(batch_labels)
        splits[split] = Split(np.concatenate(images), np.concatenate(labels))
    return DecodedDataset(classes, splits)


def read_dataset(root: Path) -> DecodedDataset:
    """Detect the layout under ``root`` and decode both splits."""
    if not Path(root).is_dir():
        raise DatasetError(f"{root}: missing; run `dvc repro download` first")
    layout = detect_layout(root)
    reader = read_image_folders if layout.kind == "image-folders" else read_python_batches
    dataset = reader(layout.root)
    dataset.layout = layout.kind
    return dataset
