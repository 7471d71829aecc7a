"""The trained CVAE as an MLflow ``pyfunc`` model: class labels in, images out.

``mlflow.pyfunc.load_model(uri).predict(...)`` and ``mlflow models serve`` both
call ``CVAEGenerator.predict``. Input: class names or indices — a list, an
array, or a DataFrame with a ``label`` column (what a served model receives from
``{"dataframe_records": [{"label": "cat"}, {"label": 3}]}``). Optional params
``seed`` (same seed + labels -> same images), ``temperature`` (the latent density's scale) and
``latents``: ``gmm`` draws z from the per-class GMM of ``sample.latents: gmm`` when the model ships
one (the default then), ``prior`` from the model's prior. The default temperature is the one the
``sample`` stage scored (``sample.temperature``, shipped as the model's ``settings`` artifact; 1.0 for the model the
training logs), so by default the served images are the evaluated ones.
Output: float32 images ``[N, 3, 32, 32]`` in [0, 1], the decoder's mean.

A custom ``PythonModel`` rather than the ``mlflow.pytorch`` flavour, because
the latter's ``predict`` takes a tensor only: no class names, no per-request
seed or temperature. It is logged as a "model from code" (``mlflow_model.py``),
so no pickled object is stored; the weights travel as the pipeline's own
``model.pt`` (loaded with ``weights_only=True``), and this package's code rides
along (``code_paths``), so serving needs torch, not a checkout of the project.
A bad label raises an ``MlflowException`` with ``INVALID_PARAMETER_VALUE``, which
the scoring server answers with HTTP 400 and the message.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

MAX_IMAGES_PER_REQUEST = 10_000
GMM_ARTIFACT = "latent_gmm"  # the optional artifact: the per-class GMM that sample.latents: gmm fitted
SETTINGS_ARTIFACT = "settings"  # {"temperature": the one the generator's samples were scored at}


def _bad_request(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def parse_labels(model_input: Any, classes: list[str]) -> np.ndarray:
    """Class names or indices (list, array, Series, or DataFrame column ``label``) -> int64 indices."""
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        if "label" not in model_input.columns:
            raise _bad_request(
                f"input needs a 'label' column (class name or index); got columns {list(model_input.columns)}"
            )
        values = model_input["label"].tolist()
    elif isinstance(model_input, (pd.Series, np.ndarray, list, tuple)):
        values = list(np.asarray(model_input, dtype=object).ravel())
    else:
        raise _bad_request(f"input must be class labels (names or indices), got {type(model_input).__name__}")
    if not values:
        raise _bad_request("no labels given: send at least one class name or index")
    if len(values) > MAX_IMAGES_PER_REQUEST:
        raise _bad_request(f"{len(values)} labels in one request; at most {MAX_IMAGES_PER_REQUEST}")
    index = {name: i for i, name in enumerate(classes)}
    out = np.empty(len(values), dtype=np.int64)
    for i, value in enumerate(values):
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and 0 <= value < len(classes):
            out[i] = value
        elif isinstance(value, str) and value in index:
            out[i] = index[value]
        elif isinstance(value, str) and value.strip().isdigit() and int(value) < len(classes):
            out[i] = int(value)
        else:
            raise _bad_request(f"unknown class label {value!r}: use one of {classes} or an index 0-{len(classes) - 1}")
    return out


class CVAEGenerator(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper around the pipeline's ``models/model.pt``."""

    # ``predict`` validates its own input (a list, an array or a DataFrame of labels: parse_labels answers
    # 400 with the reason). Without this MLflow, which validates by type hints, warns at class definition
    # that there are none — a warning that then stood before every stage's one-line error.
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        from .expost import ClassGMM
        from .models.artifact import load_trained_model

        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.classes = load_trained_model(Path(context.artifacts["model"]), self.device)
        gmm_file = context.artifacts.get(GMM_ARTIFACT)
        self.gmm = ClassGMM.load(gmm_file) if gmm_file else None
        settings_file = context.artifacts.get(SETTINGS_ARTIFACT)
        settings = json.loads(Path(settings_file).read_text()) if settings_file else {}
        self.default_temperature = float(settings.get("temperature", 1.0))

    def predict(self, context, model_input, params: dict | None = None) -> np.ndarray:
        params = params or {}
        labels = parse_labels(model_input, self.classes)
        temperature = float(params.get("temperature", self.default_temperature))
        if not temperature > 0:
            raise _bad_request(f"temperature must be > 0, got {temperature}")
        latents = params.get("latents") or ("gmm" if self.gmm is not None else "prior")
        if latents not in ("gmm", "prior"):
            raise _bad_request(f"latents must be 'gmm' or 'prior', got {latents!r}")
        if latents == "gmm" and self.gmm is None:
            raise _bad_request(
                "latents='gmm': this model ships no GMM (it was not sampled with "
                "sample.latents: gmm); use latents='prior'"
            )
        seed = params.get("seed")
        generator = torch.Generator(device=self.device)
        if seed is not None and int(seed) >= 0:
            generator.manual_seed(int(seed))
        else:
            generator.seed()
        with torch.inference_mode():
            images = self.model.sample(
                torch.from_numpy(labels),
                temperature,
                generator=generator,
                latents=self.gmm if latents == "gmm" else None,
            )
        return images.float().cpu().numpy()


def signature(temperature: float = 1.0):
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec

    # no input schema: labels arrive as a list/array ({"inputs": [...]}) or as a DataFrame with a
    # 'label' column ({"dataframe_records": ...}); parse_labels checks either and names the problem.
    # latents "" = the model's own choice (its GMM when it ships one), so one signature fits both
    return ModelSignature(
        inputs=None,
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, 32, 32))]),
        params=ParamSchema(
            [
                ParamSpec("seed", "long", -1),
                ParamSpec("temperature", "double", float(temperature)),
                ParamSpec("latents", "string", ""),
            ]
        ),
    )


def log_generator(
    model_file: Path, classes: list[str], name: str = "model", latent_gmm: Path | None = None, temperature: float = 1.0
):
    """Log ``model_file`` as a pyfunc generator in the active run; returns MLflow's ModelInfo.

    ``latent_gmm``: a ``ClassGMM`` file to ship with it, so the served model draws its latents
    from the same ex-post density as the evaluated samples (the ``sample`` stage does this), at
    ``temperature`` unless a request says otherwise."""
    import torchvision

    package_dir = Path(__file__).resolve().parent
    requirements = [
        f"torch=={torch.__version__.split('+')[0]}",
        f"torchvision=={torchvision.__version__.split('+')[0]}",
        f"numpy=={np.__version__}",
        f"mlflow=={mlflow.__version__}",
        "pydantic>=2.6",
    ]
    # the default temperature travels as an artifact, not as ``model_config``: MLflow logs a model_config
    # as run params, and a second generator in the same run (sample's, after train's) would then clash
    # with the first one's "temperature" param
    settings_dir = Path(tempfile.mkdtemp(prefix="generator-settings-"))
    settings = settings_dir / "settings.json"
    settings.write_text(json.dumps({"temperature": float(temperature)}) + "\n")
    artifacts = {"model": str(model_file), SETTINGS_ARTIFACT: str(settings)}
    if latent_gmm:
        artifacts[GMM_ARTIFACT] = str(latent_gmm)
    try:
        return _log_model(name, package_dir, artifacts, temperature, classes, requirements, latent_gmm is not None)
    finally:
        shutil.rmtree(settings_dir, ignore_errors=True)


def _log_model(name, package_dir, artifacts, temperature, classes, requirements, ships_gmm: bool):
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=str(package_dir / "mlflow_model.py"),  # model from code: nothing pickled
        artifacts=artifacts,
        code_paths=[str(package_dir)],
        signature=signature(temperature),
        input_example=list(classes[:2]),
        pip_requirements=requirements,
        metadata={
            "classes": list(classes),
            "input": "class names or indices (column 'label')",
            "params": "seed (int, -1 = random), temperature (float), latents (gmm | prior)",
            "default_temperature": float(temperature),
            "latents": "ex-post per-class GMM" if ships_gmm else "model prior",
            "output": "float32 images [N,3,32,32] in [0,1]",
        },
    )
