"""Reference features: Inception features of the real split FID is measured against.

Computed once by the ``fid_reference`` stage and saved with their labels, so
per-class statistics reuse them instead of running the Inception network again,
and the class-consistency probe fitted on them is saved beside them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import PipelineError, reading
from ..io import atomic_file

FEATURES_FILE = "features.npz"
STATS_FILE = "stats.npz"
PROBE_FILE = "probe.npz"


@dataclass
class FeatureSet:
    features: np.ndarray  # float32 [N, 2048]
    labels: np.ndarray  # int64 [N]
    classes: list[str]

    def save(self, path: Path) -> None:
        with atomic_file(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, features=self.features.astype(np.float32), labels=self.labels, classes=np.array(self.classes))

    @classmethod
    def load(cls, path: Path) -> FeatureSet:
        if not Path(path).is_file():
            raise PipelineError(f"{path}: missing; run `dvc repro` (the fid_reference or evaluate stage) first")
        with reading(path), np.load(path) as data:
            return cls(data["features"].astype(np.float64), data["labels"], [str(c) for c in data["classes"]])

    def of_class(self, label: int) -> np.ndarray:
        return self.features[self.labels == label]
