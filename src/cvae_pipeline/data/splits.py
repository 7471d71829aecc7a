"""Seeded, stratified subsets and validation splits (scikit-learn's ``train_test_split``).

Stratification keeps every class in the same proportion in each part, so a
quick run on ``train_subset=1000`` sees exactly 100 images of each CIFAR-10
class and per-class metrics stay comparable to a full run.
"""

from __future__ import annotations

import numpy as np

from ..errors import DatasetError


def train_test_split(*args, **kwargs):
    """scikit-learn's, imported on first use: only ``prepare`` splits, and importing scikit-learn costs
    every other stage that reads the prepared arrays (which import this module) about a second."""
    from sklearn.model_selection import train_test_split

    return train_test_split(*args, **kwargs)


def _check_feasible(labels: np.ndarray, size: int, what: str) -> None:
    n_classes = len(np.unique(labels))
    if size < n_classes:
        raise DatasetError(
            f"{what}: {size} is fewer than the {n_classes} classes; stratification needs at least one per class"
        )
    if size > len(labels):
        raise DatasetError(f"{what}: {size} is more than the {len(labels)} images available")


def stratified_subset(labels: np.ndarray, size: int, seed: int, what: str = "subset") -> np.ndarray:
    """Sorted indices of ``size`` items drawn per class in proportion (all when ``size == len``)."""
    labels = np.asarray(labels)
    _check_feasible(labels, size, what)
    if size == len(labels):
        return np.arange(len(labels))
    keep, _ = train_test_split(np.arange(len(labels)), train_size=size, stratify=labels, random_state=seed)
    return np.sort(keep)


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (kept, held-out) indices; the held-out part is ``fraction`` of each class."""
    labels = np.asarray(labels)
    held_size = int(round(fraction * len(labels)))
    _check_feasible(labels, held_size, "prepare.val_fraction")
    kept, held = train_test_split(np.arange(len(labels)), test_size=held_size, stratify=labels, random_state=seed)
    return np.sort(kept), np.sort(held)
