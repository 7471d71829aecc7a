"""The trained CVAE as an MLflow ``pyfunc`` model: class labels in, images out.

``mlflow.pyfunc.load_model(uri).predict(...)`` and ``mlflow models serve`` both
call ``CVAEGenerator.predict``. Input: class names or indices — a list, an
array, or a DataFrame with a ``label`` column (what a served model receives from
``{"dataframe_records": [{"label": "cat"}, {"label": 3}]}``). Optional params
``seed`` (same seed + labels -> same images), ``temperature`` (the latent density's scale),
``solver``, ``steps`` and ``guidance`` (the diffusion prior's sampler) and ``latents``: ``fitted`` draws z from
the prior stage's density (``models/prior.pt``) when the model ships one (the default then),
``model`` from the model's own prior. The defaults are the settings the ``sample`` stage scored
(shipped as the model's ``settings`` artifact; the model the training logs ships no prior), so by
default the served images are the evaluated ones: for a seed, exactly what ``sample`` drew.
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

import importlib.metadata
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

from .precision import Precision
from .prior.diffusion import SOLVERS

#: labels per request: 1,000 images are about 60 MB of JSON in the answer, which bounds the server's
#: memory per request (tests/test_serving.py measures it under load); ask for more in several requests
MAX_IMAGES_PER_REQUEST = 1_000
PRIOR_ARTIFACT = "prior"  # the optional artifact: models/prior.pt, the density sample.latents: fitted draws from
#: {"temperature", "solver", "steps", "guidance", "precision"}: what the generator's samples were scored at
SETTINGS_ARTIFACT = "settings"
#: the sampler settings (all but the precision a request may override) and the defaults of a generator without
#: settings; the precision is the one ``sample`` chose, so the served draws are the scored ones
#: (a generator logged before ``sample.solver`` existed was scored with DDIM, so that is the default)
SAMPLER_DEFAULTS = {"temperature": 1.0, "solver": "ddim", "steps": 50, "guidance": 1.0, "precision": "fp32"}
MAX_STEPS = 1000


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
        from .models.artifact import load_trained_model
        from .prior import load_prior

        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.classes = load_trained_model(Path(context.artifacts["model"]), self.device)
        prior_file = context.artifacts.get(PRIOR_ARTIFACT)
        self.prior = load_prior(Path(prior_file))[1].to(self.device) if prior_file else None
        settings_file = context.artifacts.get(SETTINGS_ARTIFACT)
        settings = json.loads(Path(settings_file).read_text()) if settings_file else {}
        self.defaults = {key: settings.get(key, value) for key, value in SAMPLER_DEFAULTS.items()}
        self.precision = Precision.parse(self.defaults["precision"])
        self.precision.module(self.model)

    def _setting(self, params: dict, key: str, cast, valid, rule: str):
        """A request's ``key``, or the generator's default (the seed's: -1, a random draw)."""
        raw = params.get(key)
        try:
            value = cast(self.defaults.get(key, -1) if raw is None else raw)
        except (TypeError, ValueError, OverflowError):  # "abc", NaN or infinity where an integer is due
            raise _bad_request(f"{key} must be {rule}, got {raw!r}") from None
        if not valid(value):
            raise _bad_request(f"{key} must be {rule}, got {raw!r}")
        return value

    def predict(self, context, model_input, params: dict | None = None) -> np.ndarray:
        params = params or {}
        labels = parse_labels(model_input, self.classes)
        temperature = self._setting(params, "temperature", float, lambda v: 0 < v < 1e3, "a number in (0, 1000)")
        steps = self._setting(params, "steps", int, lambda v: 1 <= v <= MAX_STEPS, f"an integer 1-{MAX_STEPS}")
        guidance = self._setting(params, "guidance", float, lambda v: 0 <= v <= 100, "a number in [0, 100]")
        solver = self._setting(params, "solver", str, lambda v: v in SOLVERS, f"one of {', '.join(SOLVERS)}")
        latents = params.get("latents") or ("fitted" if self.prior is not None else "model")
        if latents not in ("fitted", "model"):
            raise _bad_request(f"latents must be 'fitted' or 'model', got {latents!r}")
        if latents == "fitted" and self.prior is None:
            raise _bad_request(
                "latents='fitted': this model ships no fitted prior (it is the training's, not sample's); "
                "use latents='model'"
            )
        seed = self._setting(params, "seed", int, lambda v: -1 <= v < 2**63, "an integer 0 to 2**63-1 (-1: random)")
        generator = torch.Generator(device=self.device)
        if seed >= 0:
            generator.manual_seed(seed)
        else:
            generator.seed()
        sampler = self.prior.sampler(steps, guidance, solver) if latents == "fitted" else None
        with torch.inference_mode(), self.precision.autocast(self.device):
            images = self.model.sample(torch.from_numpy(labels), temperature, generator=generator, latents=sampler)
        return images.float().cpu().numpy()


def signature(settings: dict):
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec

    # no input schema: labels arrive as a list/array ({"inputs": [...]}) or as a DataFrame with a
    # 'label' column ({"dataframe_records": ...}); parse_labels checks either and names the problem.
    # latents "" = the model's own choice (its fitted prior when it ships one), so one signature fits both
    return ModelSignature(
        inputs=None,
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, 32, 32))]),
        params=ParamSchema(
            [
                ParamSpec("seed", "long", -1),
                ParamSpec("temperature", "double", float(settings["temperature"])),
                ParamSpec("solver", "string", str(settings["solver"])),
                ParamSpec("steps", "long", int(settings["steps"])),
                ParamSpec("guidance", "double", float(settings["guidance"])),
                ParamSpec("latents", "string", ""),
            ]
        ),
    )


def log_generator(
    model_file: Path,
    classes: list[str],
    name: str = "model",
    prior_file: Path | None = None,
    settings: dict | None = None,
    described: str = "model prior",
):
    """Log ``model_file`` as a pyfunc generator in the active run; returns MLflow's ModelInfo.

    ``prior_file``: the fitted prior (``models/prior.pt``) to ship with it, so the served model draws
    its latents from the same density as the evaluated samples (the ``sample`` stage does this), with
    the sampler ``settings`` (temperature, solver, steps, guidance) unless a request says otherwise;
    ``described``: what the latents are, for the model's metadata."""
    settings = SAMPLER_DEFAULTS | (settings or {})
    package_dir = Path(__file__).resolve().parent
    requirements = [
        f"torch=={torch.__version__.split('+')[0]}",
        f"torchvision=={importlib.metadata.version('torchvision').split('+')[0]}",  # no import: ~1.5 s
        f"numpy=={np.__version__}",
        f"mlflow=={mlflow.__version__}",
        "pydantic>=2.6",
    ]
    # the defaults travel as an artifact, not as ``model_config``: MLflow logs a model_config as run
    # params, and a second generator in the same run (sample's, after train's) would then clash with
    # the first one's params
    settings_dir = Path(tempfile.mkdtemp(prefix="generator-settings-"))
    settings_file = settings_dir / "settings.json"
    settings_file.write_text(json.dumps(settings) + "\n")
    artifacts = {"model": str(model_file), SETTINGS_ARTIFACT: str(settings_file)}
    if prior_file:
        artifacts[PRIOR_ARTIFACT] = str(prior_file)
    try:
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(package_dir / "mlflow_model.py"),  # model from code: nothing pickled
            artifacts=artifacts,
            code_paths=[str(package_dir)],
            signature=signature(settings),
            input_example=list(classes[:2]),
            pip_requirements=requirements,
            metadata={
                "classes": list(classes),
                "input": "class names or indices (column 'label')",
                "params": f"seed (int, -1 = random), temperature (float), solver ({' | '.join(SOLVERS)}), "
                "steps (int), guidance (float), "
                "latents (fitted | model)",
                "defaults": settings,
                "latents": described,
                "output": "float32 images [N,3,32,32] in [0,1]",
            },
        )
    finally:
        shutil.rmtree(settings_dir, ignore_errors=True)
