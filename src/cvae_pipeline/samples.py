"""The generated set on disk (``data/samples/``): what ``sample`` writes and ``evaluate`` scores.

uint8 images and int64 labels as ``.npy`` (the prepared data's format), the class names, what the
images are (``sampling.json``: latents from where, decoder mean or draw, temperature), and the logged
generator that ships the model with its fitted prior (what ``evaluate`` registers). The MLflow run they
were logged to is named by ``reports/sample_run.json`` (see :mod:`.tracking.handoff` for why it is not here).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import PipelineError, reading

IMAGES_FILE = "images.npy"
LABELS_FILE = "labels.npy"
CLASSES_FILE = "classes.json"
SAMPLING_FILE = "sampling.json"
GENERATOR_FILE = "generator.json"  # {"model_uri": ...}: the logged generator, what evaluate registers


@dataclass
class SampleSet:
    images: np.ndarray  # uint8 [N, 3, 32, 32]
    labels: np.ndarray  # int64 [N]
    classes: list[str]
    sampling: dict = field(default_factory=dict)  # {"latents": ..., "images": ..., "temperature": ...}

    def save(self, directory: Path) -> None:
        """Into an existing directory (the stage writes it inside ``io.atomic_directory``)."""
        directory = Path(directory)
        np.save(directory / IMAGES_FILE, self.images)
        np.save(directory / LABELS_FILE, self.labels)
        (directory / CLASSES_FILE).write_text(json.dumps(self.classes) + "\n")
        (directory / SAMPLING_FILE).write_text(json.dumps(self.sampling) + "\n")

    @classmethod
    def load(cls, directory: Path) -> SampleSet:
        directory = Path(directory)
        missing = [name for name in (IMAGES_FILE, LABELS_FILE, CLASSES_FILE) if not (directory / name).is_file()]
        if missing:
            raise PipelineError(f"{directory}: no sample set ({', '.join(missing)} missing); run `dvc repro sample`")
        with reading(directory / IMAGES_FILE, "sample"):
            images = np.load(directory / IMAGES_FILE)
        with reading(directory / LABELS_FILE, "sample"):
            labels = np.load(directory / LABELS_FILE)
        with reading(directory / CLASSES_FILE, "sample"):
            classes = json.loads((directory / CLASSES_FILE).read_text())
        sampling_file = directory / SAMPLING_FILE
        with reading(sampling_file, "sample"):
            sampling = json.loads(sampling_file.read_text()) if sampling_file.is_file() else {}
        if (
            images.dtype != np.uint8
            or images.ndim != 4
            or images.shape[1:] != (3, 32, 32)
            or len(labels) != len(images)
        ):
            raise PipelineError(
                f"{directory}: images {images.dtype}{list(images.shape)} with {len(labels)} labels are not a sample "
                "set (uint8 [N,3,32,32]); re-create it with `dvc repro -f sample`"
            )
        return cls(images, labels.astype(np.int64), list(classes), sampling)

    @staticmethod
    def generator(directory: Path) -> dict:
        """The logged generator that drew the set: ``model_uri`` and, when registered, ``registered_model``
        and ``version``; empty when the sampling was not tracked."""
        path = Path(directory) / GENERATOR_FILE
        with reading(path, "sample"):
            return json.loads(path.read_text()) if path.is_file() else {}
