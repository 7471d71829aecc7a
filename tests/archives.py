"""Build tiny CIFAR-10-like archives of both supported layouts, and broken ones.

Tests make their own data instead of shipping fixtures, so each test says
exactly what it feeds the pipeline.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def md5(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def class_images(label: int, count: int, seed: int) -> np.ndarray:
    """uint8 [count, 32, 32, 3]; each class has its own mean colour so labels are checkable."""
    rng = np.random.default_rng(seed * 1000 + label)
    base = np.array([(label * 25) % 256, (label * 70) % 256, (255 - label * 25) % 256], dtype=np.int16)
    noise = rng.integers(-20, 21, size=(count, 32, 32, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_image_folder_archive(
    path: Path, train_per_class: int = 6, test_per_class: int = 3, classes: list[str] = CLASSES, top: str = ""
) -> Path:
    """``[top/]train/<class>/NNNN.jpg`` + ``test/...`` as tar.gz (the offline mirror's layout)."""
    with tarfile.open(path, "w:gz") as tar:
        for split, count in (("train", train_per_class), ("test", test_per_class)):
            for label, name in enumerate(classes):
                for i, img in enumerate(class_images(label, count, seed=0 if split == "train" else 1)):
                    buf = io.BytesIO()
                    Image.fromarray(img).save(buf, format="JPEG", quality=95)
                    _add_bytes(tar, f"{top}{split}/{name}/{i:04d}.jpg", buf.getvalue())
    return path


def make_batches_arrays(train_per_class: int, test_per_class: int, classes: list[str] = CLASSES):
    """The images the batches archive holds: {split: (uint8 [N,3,32,32], labels)}."""
    out = {}
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        imgs, labels = [], []
        for label in range(len(classes)):
            imgs.append(class_images(label, count, seed=len(split)).transpose(0, 3, 1, 2))
            labels += [label] * count
        out[split] = (np.concatenate(imgs), np.array(labels, dtype=np.int64))
    return out


def make_batches_archive(
    path: Path, train_per_class: int = 5, test_per_class: int = 2, classes: list[str] = CLASSES
) -> Path:
    """``cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}`` as tar.gz (the official layout)."""
    arrays = make_batches_arrays(train_per_class, test_per_class, classes)
    train_x, train_y = arrays["train"]
    test_x, test_y = arrays["test"]
    order = np.random.default_rng(0).permutation(len(train_y))  # batches are shuffled in the original
    train_x, train_y = train_x[order], train_y[order]
    with tarfile.open(path, "w:gz") as tar:
        root = "cifar-10-batches-py/"
        for i, idx in enumerate(np.array_split(np.arange(len(train_y)), 5), start=1):
            batch = {
                "batch_label": f"training batch {i} of 5",
                "labels": train_y[idx].tolist(),
                "data": train_x[idx].reshape(len(idx), -1),
                "filenames": [f"{j}.png" for j in idx],
            }
            _add_bytes(tar, f"{root}data_batch_{i}", pickle.dumps(batch, protocol=2))
        test = {
            "batch_label": "testing batch 1 of 1",
            "labels": test_y.tolist(),
            "data": test_x.reshape(len(test_y), -1),
            "filenames": [],
        }
        _add_bytes(tar, f"{root}test_batch", pickle.dumps(test, protocol=2))
        _add_bytes(tar, f"{root}batches.meta", pickle.dumps({"label_names": classes, "num_vis": 3072}, protocol=2))
        _add_bytes(tar, f"{root}readme.html", b"<html></html>")
    return path


def make_archive_with_member(path: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    """A small valid image-folder archive plus one extra (possibly hostile) entry."""
    make_image_folder_archive(path.with_suffix(".base.tar.gz"), 1, 1)
    with tarfile.open(path.with_suffix(".base.tar.gz")) as src, tarfile.open(path, "w:gz") as dst:
        for m in src.getmembers():
            dst.addfile(m, src.extractfile(m))
        dst.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return path
