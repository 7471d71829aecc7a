"""Typed, validated view of ``params.yaml``.

Every stage validates the *whole* file before doing any work, so a typo in any
section (``prepare.val_fractoin``) stops the pipeline at its first stage with
one line naming the key, the value and what is allowed, instead of surfacing
as a silently ignored knob an hour later. Sections for later stages are added
here as they arrive; unknown keys are errors at every level.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool, StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigError

DEFAULT_PARAMS_FILE = "params.yaml"


class _Section(BaseModel):
    """Base of every params section: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataSource(_Section):
    """One candidate archive: a local path or an http(s) URL, pinned by one checksum."""

    uri: str = Field(min_length=1, description="local path (relative to the repo root) or http(s) URL")
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    md5: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{32}$")

    @model_validator(mode="after")
    def _exactly_one_checksum(self) -> DataSource:
        if (self.sha256 is None) == (self.md5 is None):
            raise ValueError("give exactly one of sha256 or md5 for each source")
        return self

    @property
    def is_url(self) -> bool:
        return self.uri.startswith(("http://", "https://"))

    @property
    def checksum(self) -> tuple[str, str]:
        """(algorithm, lower-case hex digest)."""
        if self.sha256 is not None:
            return "sha256", self.sha256.lower()
        assert self.md5 is not None
        return "md5", self.md5.lower()


class DataParams(_Section):
    """``data``: where the raw archive comes from (read by the ``download`` stage)."""

    sources: list[DataSource] = Field(min_length=1)
    timeout_seconds: float = Field(default=60.0, gt=0, description="network timeout per connect/read")

    @field_validator("sources", mode="before")
    @classmethod
    def _sources_are_a_list(cls, value: Any) -> Any:
        if isinstance(value, dict):
            raise ValueError("must be a list of {uri, sha256|md5} entries")
        return value


class PrepareParams(_Section):
    """``prepare``: decoding, validation split and quick-run subsets."""

    val_fraction: float = Field(
        default=0.1, gt=0, le=0.5, description="fraction of the train set held out for validation"
    )
    train_subset: StrictInt | None = Field(
        default=None, gt=0, description="training images kept after the validation split; null = all"
    )
    test_subset: StrictInt | None = Field(default=None, gt=0, description="test images kept; null = all")
    seed: StrictInt = Field(default=0, ge=0)


#: Registered backbones (``cvae_pipeline.models.BACKBONES``; a test keeps the two in step).
Backbone = Literal["mlp", "conv", "resnet"]


class FlowParams(_Section):
    """``model.flow``: normalizing flows in the latent space (see ``models/flows.py``)."""

    posterior: Literal["none", "planar", "iaf"] = Field(
        default="none", description="flow on q(z|x,y): none | planar (Rezende & Mohamed) | iaf (Kingma et al.)")
    steps: StrictInt = Field(default=4, ge=1, le=64, description="steps of the posterior flow")
    hidden: StrictInt = Field(default=256, ge=4, le=4096, description="hidden units of IAF's MADE / the prior's couplings")
    prior_steps: StrictInt = Field(default=4, ge=1, le=64, description="RealNVP couplings of model.prior=flow")


class ModelParams(_Section):
    """``model``: which CVAE, how big, how conditioned, which latent flows and prior, which likelihood."""

    backbone: Backbone = "resnet"
    latent_dim: StrictInt = Field(default=64, ge=1, le=4096)
    width: StrictInt = Field(default=32, ge=4, le=2048, description="hidden units (mlp) / base channels")
    blocks: StrictInt = Field(default=1, ge=0, le=8, description="residual blocks per resolution (resnet)")
    latent_resolution: Literal[1, 4, 8] = Field(
        default=1, description="1: z is a vector; 4 or 8: z is a latent_dim/r^2-channel r x r map (resnet only)")
    conditioning: Literal["concat", "film"] = "film"
    prior: Literal["standard", "flow"] = Field(
        default="standard", description="p(z|y): standard N(0, I) | flow (class-conditional RealNVP, trained jointly)")
    flow: FlowParams = FlowParams()
    likelihood: Literal["bernoulli", "gaussian", "logistic_mixture"] = "gaussian"
    gaussian_variance: Literal["fixed", "learned", "pixel"] = "learned"
    gaussian_std: float = Field(default=0.1, gt=0, le=1, description="fixed std, or the learned std's start")
    mixtures: StrictInt = Field(default=10, ge=1, le=64, description="components of likelihood=logistic_mixture")

    @model_validator(mode="after")
    def _latent_map_fits(self) -> ModelParams:
        r = self.latent_resolution
        if r > 1 and self.backbone != "resnet":
            raise ValueError(f"latent_resolution {r} needs backbone resnet (got {self.backbone}); set latent_resolution 1")
        if self.latent_dim % (r * r):
            raise ValueError(f"latent_dim {self.latent_dim} is not a whole number of {r}x{r} channels; "
                             f"use a multiple of {r * r}")
        return self


class TrainParams(_Section):
    """``train``: optimisation, schedules, regularisers, reproducibility and hardware."""

    epochs: StrictInt = Field(default=8, ge=1)
    batch_size: StrictInt = Field(default=128, ge=1)
    lr: float = Field(default=1e-3, gt=0, le=1)
    optimizer: Literal["adam", "adamw"] = "adamw"
    weight_decay: float = Field(default=0.0, ge=0)
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    warmup_epochs: float = Field(default=0.5, ge=0, description="linear lr warm-up")
    beta: float = Field(default=1.0, ge=0, description="weight of the KL term after warm-up")
    kl_warmup_epochs: float = Field(default=1.0, ge=0, description="beta rises linearly from 0 over these")
    free_bits: float = Field(default=0.0, ge=0, description="nats per latent dim (0 = off)")
    grad_clip: float | None = Field(default=100.0, gt=0, description="max gradient norm; null = off")
    ema_decay: float | None = Field(default=0.999, gt=0, lt=1, description="EMA of weights; null = off")
    augment: Literal["none", "hflip"] = Field(
        default="none", description="training-batch augmentation: none, or a random horizontal flip of half the images")
    seed: StrictInt = Field(default=0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: StrictInt | None = Field(default=None, ge=1, description="torch CPU threads; null = torch's default")
    sample_every: StrictInt = Field(default=1, ge=1, description="log a sample grid every N epochs")


class SampleParams(_Section):
    """``sample``: the generated set that ``evaluate`` scores."""

    per_class: StrictInt = Field(default=100, ge=2, description="images generated per class")
    temperature: float = Field(default=1.0, ge=0, description="std of the prior's base draw (GMM: of its components)")
    latents: Literal["prior", "gmm"] = Field(
        default="prior", description="z from the model's prior, or a per-class GMM fitted ex post on the encoded train set")
    gmm_components: StrictInt = Field(default=10, ge=1, le=256, description="components per class of latents=gmm")
    decoder_output: Literal["mean", "sample"] = Field(
        default="mean", description="the decoder's mean image, or a draw from the likelihood")
    seed: StrictInt = Field(default=0, ge=0)
    batch_size: StrictInt = Field(default=500, ge=1)


class EvaluateParams(_Section):
    """``evaluate``: FID/KID reference, metric settings, likelihood bounds."""

    reference: Literal["test", "train"] = Field(default="test", description="real split FID is measured against")
    reference_size: StrictInt | None = Field(default=None, ge=20, description="stratified subset; null = all")
    batch_size: StrictInt = Field(default=50, ge=1, description="Inception batch size")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    kid_subsets: StrictInt = Field(default=100, ge=1)
    kid_subset_size: StrictInt = Field(default=1000, ge=2)
    pr_neighbours: StrictInt = Field(default=3, ge=1, description="k of the k-NN precision/recall manifolds")
    probe_folds: StrictInt = Field(default=3, ge=2, description="cross-validation folds of the linear probe")
    iw_samples: StrictInt = Field(default=16, ge=1, description="importance samples of the likelihood bound")
    likelihood_images: StrictInt | None = Field(default=None, ge=1, description="test images for bounds; null = all")
    reconstruction_fid: StrictBool = Field(
        default=False, description="also the FID of the likelihood test images' reconstructions (the decoder's floor)")


class MlflowParams(_Section):
    """``mlflow``: where runs are grouped (the tracking URI comes from MLFLOW_TRACKING_URI)."""

    experiment: str = Field(default="cvae-cifar10", min_length=1)
    registered_model: str | None = Field(
        default="cvae-cifar10", min_length=1,
        description="Model Registry name the evaluated model is registered under (null: do not register)")
    required: StrictBool = Field(
        default=True, description="false: an unreachable tracking store only warns and the stages run untracked")


class PipelineParams(_Section):
    """The whole of ``params.yaml``."""

    data: DataParams
    prepare: PrepareParams = PrepareParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    sample: SampleParams = SampleParams()
    evaluate: EvaluateParams = EvaluateParams()
    mlflow: MlflowParams = MlflowParams()


def _dotted(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the key at ``loc`` (to list its allowed keys)."""
    model: Any = PipelineParams
    for item in loc[:-1]:
        if isinstance(item, int):
            continue
        field = model.model_fields.get(item) if isinstance(model, type) else None
        if field is None:
            return None
        annotation = field.annotation
        for candidate in getattr(annotation, "__args__", ()) or (annotation,):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                model = candidate
                break
        else:
            return None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def format_validation_error(error: ValidationError, source: str) -> str:
    """One line per problem: ``<file>: <key> = <value>: <what is allowed>``."""
    lines = []
    for err in error.errors():
        loc = tuple(err["loc"])
        key = _dotted(loc) or "<root>"
        if err["type"] == "extra_forbidden":
            owner = _model_at(loc)
            allowed = ", ".join(owner.model_fields) if owner else "see README"
            lines.append(f"{source}: unknown key '{key}' (allowed here: {allowed})")
        elif err["type"] == "missing":
            lines.append(f"{source}: missing key '{key}'")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{source}: {key} = {err['input']!r} is invalid: {msg}")
    return "\n".join(lines)


def parse_params(raw: Any, source: str = DEFAULT_PARAMS_FILE) -> PipelineParams:
    """Validate an already-loaded params mapping."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections (data, prepare, ...), got {type(raw).__name__}")
    try:
        return PipelineParams.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_params(path: str | os.PathLike = DEFAULT_PARAMS_FILE) -> PipelineParams:
    """Read and validate ``params.yaml``; raise :class:`ConfigError` with a one-line reason."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found in {Path.cwd()}; run from the repository root")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"{path}: not valid YAML{at}: {getattr(exc, 'problem', exc)}") from None
    return parse_params(raw, str(path))
