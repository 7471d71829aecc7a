"""Typed, validated view of ``params.yaml``: the schema, and reading the file into it.

Every stage validates the *whole* file before doing any work, so a typo in any
section (``prepare.val_fractoin``) stops the pipeline at its first stage with
one line naming the key, the value and what is allowed, instead of surfacing
as a silently ignored knob an hour later. Sections for later stages are added
here as they arrive; unknown keys are errors at every level. How a validation or YAML error reads
is :mod:`.errors`' job (``format_validation_error``, ``describe_yaml_error``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigError, describe_yaml_error, format_validation_error

DEFAULT_PARAMS_FILE = "params.yaml"
PrecisionSetting = Literal["auto", "fp32", "bf16"]
PRECISION_HELP = (
    "auto (bf16 autocast where the CPU or GPU has native bf16, else fp32: the same choice every run on a "
    "machine) | fp32 | bf16; weights and loss sums stay fp32"
)


class _Section(BaseModel):
    """Base of every params section: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def knob(description: str, **constraints: Any) -> Any:
    """A required field with its one description. The value lives in ``params.yaml`` only: the schema
    says what is allowed and what it means, never a second default that could drift from the file."""
    return Field(description=description, **constraints)


class DataSource(_Section):
    """One candidate archive: a local path or an http(s) URL, pinned by one checksum."""

    uri: str = knob("local path (relative to the repository root) or http(s) URL of a CIFAR-10 archive", min_length=1)
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$", description="its SHA-256 (or give md5)")
    md5: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{32}$", description="its MD5 (or give sha256)")

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

    sources: list[DataSource] = knob(
        "candidate archives ({uri, sha256 | md5}), tried in order; the first that exists and verifies is used",
        min_length=1,
    )
    timeout_seconds: float = knob("network timeout per connect and per read of a URL source", gt=0)

    @field_validator("sources", mode="before")
    @classmethod
    def _sources_are_a_list(cls, value: Any) -> Any:
        if isinstance(value, dict):
            raise ValueError("must be a list of {uri, sha256|md5} entries")
        return value


class PrepareParams(_Section):
    """``prepare``: decoding, validation split and quick-run subsets."""

    val_fraction: float = knob("fraction of the train set held out for validation, stratified per class", gt=0, le=0.5)
    train_subset: StrictInt | None = knob(
        "training images kept after the validation split, stratified (1000 = 100 per class); null = all", gt=0
    )
    test_subset: StrictInt | None = knob("test images kept, stratified; null = all", gt=0)
    seed: StrictInt = knob("seed of the split and the subsets", ge=0)


#: Registered backbones (``cvae_pipeline.models.BACKBONES``; a test keeps the two in step).
Backbone = Literal["mlp", "conv", "resnet"]


class FlowParams(_Section):
    """``model.flow``: normalizing flows in the latent space (see ``models/flows.py``)."""

    posterior: Literal["none", "planar", "iaf"] = knob(
        "flow on q(z|x,y): none | planar (Rezende & Mohamed) | iaf (inverse autoregressive, Kingma et al.)"
    )
    steps: StrictInt = knob("steps of the posterior flow", ge=1, le=64)
    hidden: StrictInt = knob("hidden units of IAF's MADE and of the flow prior's couplings", ge=4, le=4096)
    prior_steps: StrictInt = knob("RealNVP couplings of model.prior: flow", ge=1, le=64)


class ModelParams(_Section):
    """``model``: which CVAE, how big, how conditioned, which latent flows and prior, which likelihood."""

    backbone: Backbone = knob("mlp (the classic CVAE of the original write-up) | conv | resnet")
    latent_dim: StrictInt = knob("numbers in z (with latent_resolution r: latent_dim / r^2 channels)", ge=1, le=4096)
    width: StrictInt = knob("hidden units (mlp) or base channels (conv, resnet)", ge=4, le=2048)
    blocks: StrictInt = knob("residual blocks per resolution (resnet)", ge=0, le=8)
    latent_resolution: Literal[1, 4, 8] = knob(
        "1: z is a vector; 4 or 8: z is a (latent_dim / r^2)-channel r x r map the decoder reads locally (resnet)"
    )
    conditioning: Literal["concat", "film"] = knob(
        "how the class enters: concat (one-hot beside the input) | film (a learned embedding modulating every block)"
    )
    prior: Literal["standard", "flow"] = knob(
        "p(z|y): standard N(0, I) | flow (a class-conditional RealNVP, trained jointly)"
    )
    flow: FlowParams = knob("normalizing flows in the latent space")
    likelihood: Literal["bernoulli", "gaussian", "logistic_mixture"] = knob(
        "p(x|z,y): bernoulli (BCE, the classic) | gaussian | logistic_mixture (PixelCNN++, discrete: bits/dim)"
    )
    gaussian_variance: Literal["fixed", "learned", "pixel"] = knob(
        "the Gaussian's std: fixed | learned (one per colour channel) | pixel (the decoder outputs one per pixel)"
    )
    gaussian_std: float = knob("the fixed std, or the learned std's starting value", gt=0, le=1)
    mixtures: StrictInt = knob("components of likelihood: logistic_mixture", ge=1, le=64)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """z's layout: (latent_dim,), or (C, r, r) for a latent map (as ``BaseCVAE.latent_shape``)."""
        r = self.latent_resolution
        return (self.latent_dim // (r * r), r, r) if r > 1 else (self.latent_dim,)

    @model_validator(mode="after")
    def _latent_map_fits(self) -> ModelParams:
        r = self.latent_resolution
        if r > 1 and self.backbone != "resnet":
            raise ValueError(
                f"latent_resolution {r} needs backbone resnet (got {self.backbone}); set latent_resolution 1"
            )
        if self.latent_dim % (r * r):
            raise ValueError(
                f"latent_dim {self.latent_dim} is not a whole number of {r}x{r} channels; use a multiple of {r * r}"
            )
        return self


class TrainParams(_Section):
    """``train``: optimisation, schedules, regularisers, reproducibility and hardware."""

    epochs: StrictInt = knob("passes over the training split", ge=1)
    batch_size: StrictInt = knob("images per optimiser step (over all processes under torchrun)", ge=1)
    lr: float = knob("peak learning rate", gt=0, le=1)
    optimizer: Literal["adam", "adamw"] = knob("adam | adamw (decoupled weight decay)")
    weight_decay: float = knob("weight decay of the optimiser", ge=0)
    lr_schedule: Literal["constant", "cosine"] = knob("constant | cosine decay to 0, after the warm-up")
    warmup_epochs: float = knob("linear learning-rate warm-up from 0, in epochs", ge=0)
    beta: float = knob("weight of the KL term after its warm-up (1 = the ELBO)", ge=0)
    kl_warmup_epochs: float = knob("the KL weight rises linearly from 0 to beta over these epochs", ge=0)
    free_bits: float = knob("nats per latent dimension the KL is not penalised below; 0 = off", ge=0)
    grad_clip: float | None = knob("max gradient norm; null = off", gt=0)
    ema_decay: float | None = knob(
        "decay of the exponential moving average of the weights used to validate and sample; null = off", gt=0, lt=1
    )
    augment: Literal["none", "hflip"] = knob(
        "none | hflip: each training image is mirrored left-right with probability 1/2"
    )
    seed: StrictInt = knob("seed of the weights, the batch order, the latent noise and the flips", ge=0)
    device: Literal["auto", "cpu", "cuda"] = knob("auto (CUDA when present) | cpu | cuda; sample uses it too")
    num_threads: StrictInt | None = knob("torch CPU threads; null = torch's default", ge=1)
    precision: PrecisionSetting = knob(PRECISION_HELP)
    sample_every: StrictInt = knob("log a 10x10 class-by-row sample grid every N epochs (and after the last)", ge=1)


class PriorParams(_Section):
    """``prior``: the latent density ``sample`` draws from, fitted on the encoded training set."""

    kind: Literal["diffusion", "gmm", "none"] = knob(
        "diffusion (a class-conditional denoiser over z) | gmm (per-class Gaussian mixtures) | none (no fitted "
        "density: sample.latents must be model)"
    )
    gmm_components: StrictInt = knob("mixture components per class of kind: gmm", ge=1, le=256)
    denoiser: Literal["mlp", "conv"] = knob(
        "the denoiser of kind: diffusion: conv (3x3 residual blocks over the latent map; needs "
        "model.latent_resolution 4 or 8) | mlp (over the flat latent, any model)"
    )
    width: StrictInt = knob("the denoiser's hidden units (mlp) or channels (conv)", ge=8, le=8192)
    blocks: StrictInt = knob("the denoiser's residual blocks, conditioned on time and class", ge=1, le=64)
    epochs: StrictInt = knob("passes over the encoded training set", ge=1)
    batch_size: StrictInt = knob("latents per optimiser step", ge=1)
    lr: float = knob("peak learning rate of AdamW (5 % linear warm-up, then cosine decay to 0)", gt=0, le=1)
    weight_decay: float = knob("AdamW's decoupled weight decay", ge=0)
    ema_decay: float | None = knob("decay of the weights' moving average that samples; null = off", gt=0, lt=1)
    label_dropout: float = knob(
        "share of training labels replaced by the null class, so the denoiser also learns p(z) for guidance",
        ge=0,
        lt=1,
    )
    timesteps: StrictInt = knob("steps of the cosine noise schedule", ge=2, le=100_000)
    prediction: Literal["eps", "v"] = knob("what the denoiser predicts: eps (the noise) | v (Salimans & Ho)")
    augment: Literal["none", "hflip"] = knob("none | hflip: the mirrored training images' latents are added")
    seed: StrictInt = knob("seed of the weights, the batch order and every noise draw", ge=0)
    device: Literal["auto", "cpu", "cuda"] = knob("auto (CUDA when present) | cpu | cuda")
    precision: PrecisionSetting = knob(PRECISION_HELP)


class RefineParams(_Section):
    """``refine``: the adversarial fine-tune of the decoder that ``sample`` decodes with (encoder frozen)."""

    steps: StrictInt = knob(
        "optimiser steps of the decoder against a PatchGAN; 0 = off: sample decodes with the trained model as it is",
        ge=0,
    )
    batch_size: StrictInt = knob("training images per step (their posterior draws, mirrored at random)", ge=2)
    lr: float = knob("Adam learning rate of the decoder (betas 0.5, 0.9, as in VQGAN)", gt=0, le=1)
    disc_lr: float = knob("Adam learning rate of the discriminator (betas 0.5, 0.9)", gt=0, le=1)
    reconstruction: Literal["l1", "nll"] = knob(
        "the term the adversarial one is balanced against: l1 (mean absolute error of the decoder's mean image) "
        "| nll (the model's own likelihood, per pixel-channel)"
    )
    adversarial_weight: float = knob(
        "scale of the adaptive weight (VQGAN's disc_weight): the adversarial gradient at the decoder's last layer "
        "is this times the reconstruction's; 0 = the reconstruction term alone",
        ge=0,
        le=100,
    )
    max_weight: float = knob("bound on the adaptive weight before it is scaled", gt=0, le=1e4)
    delay: StrictInt = knob("steps the discriminator trains alone before the decoder sees its gradient", ge=0)
    disc_layers: StrictInt = knob(
        "stride-2 layers of the PatchGAN discriminator (2: 6x6 logits, each seeing 34x34 pixels)", ge=1, le=4
    )
    disc_width: StrictInt = knob("channels of the discriminator's first layer (doubling per layer, at most 8x)", ge=4)
    ema_decay: float | None = knob("decay of the decoder weights' moving average that is saved; null = off", gt=0, lt=1)
    checkpoint_every: StrictInt = knob("steps between resume checkpoints (and rows of the loss curves)", ge=1)
    seed: StrictInt = knob("seed of the discriminator's weights, the batch order, the flips and the latent draws", ge=0)
    device: Literal["auto", "cpu", "cuda"] = knob("auto (CUDA when present) | cpu | cuda")


class SampleParams(_Section):
    """``sample``: the generated set that ``evaluate`` scores."""

    per_class: StrictInt = knob("images generated per class (1000 = the FID-10k protocol)", ge=2)
    latents: Literal["fitted", "model"] = knob(
        "fitted (the prior stage's density, prior.kind) | model (the trained model's own p(z|y))"
    )
    temperature: float = knob(
        "scale of the latent draw: the diffusion prior's initial noise, the GMM components' spread, "
        "or the model prior's base std",
        ge=0,
    )
    solver: Literal["ddim", "dpmpp_2m"] = knob(
        "the diffusion prior's sampler: ddim (first order) | dpmpp_2m (DPM-Solver++(2M), second order: "
        "nearer the exact solution in as many steps)"
    )
    steps: StrictInt = knob(
        "deterministic steps of the diffusion prior's sampler (one network call each)", ge=1, le=10_000
    )
    guidance: float = knob(
        "classifier-free guidance scale of the diffusion prior: 1 = the conditional model, 0 = unconditional",
        ge=0,
        le=100,
    )
    decoder_output: Literal["mean", "sample"] = knob("mean (the decoder's mean image) | sample (a draw from p(x|z,y))")
    seed: StrictInt = knob("seed of the latent draws", ge=0)
    batch_size: StrictInt = knob("images drawn and decoded per batch", ge=1)
    precision: PrecisionSetting = knob(PRECISION_HELP + "; for the prior's steps and the decoding")


#: what may run the FID network (``metrics/inception_openvino.resolve_engine``)
InceptionEngine = Literal["auto", "torch", "openvino"]
INCEPTION_ENGINES: tuple[str, ...] = get_args(InceptionEngine)
#: precisions of the Inception features: fp32 (pytorch-fid's, the only one recorded); bf16 (`cvae fid` screening)
FEATURE_PRECISIONS = ("fp32", "bf16")


class EvaluateParams(_Section):
    """``evaluate``: FID/KID reference, metric settings, likelihood bounds."""

    reference: Literal["test", "train"] = knob("the real split FID and KID are measured against")
    reference_size: StrictInt | None = knob("a stratified subset of the reference; null = all of it", ge=20)
    batch_size: StrictInt = knob("Inception batch size", ge=1)
    device: Literal["auto", "cpu", "cuda"] = knob("auto | cpu | cuda, for Inception and the likelihood bounds")
    engine: InceptionEngine = knob(
        "what runs the Inception network, always in fp32: auto = OpenVINO on the CPU (faster, same features "
        "to ~1e-6), torch on a GPU"
    )
    kid_subsets: StrictInt = knob("subsets KID is averaged over", ge=1)
    kid_subset_size: StrictInt = knob("images per KID subset", ge=2)
    pr_neighbours: StrictInt = knob("k of the k-NN manifolds of precision and recall", ge=1)
    probe_folds: StrictInt = knob("cross-validation folds of the class-consistency probe's ceiling", ge=2)
    iw_samples: StrictInt = knob("importance samples of the test-set likelihood bound", ge=1)
    likelihood_images: StrictInt | None = knob("test images for the likelihood bounds (stratified); null = all", ge=1)
    reconstruction_fid: StrictBool = knob(
        "also the floor: FIDs of test reconstructions at the posterior mean and of decodes of posterior draws, "
        "as many images as the samples (costs two more Inception passes)"
    )


class MlflowParams(_Section):
    """``mlflow``: where runs are grouped (the tracking URI comes from MLFLOW_TRACKING_URI)."""

    experiment: str = knob("MLflow experiment of the runs", min_length=1)
    registered_model: str | None = knob(
        "Model Registry name every sampled generator is registered under (by sample; evaluate adds its "
        "scores); null = do not register",
        min_length=1,
    )
    required: StrictBool = knob("false: an unreachable tracking store only warns and the stages run untracked")


class PipelineParams(_Section):
    """The whole of ``params.yaml``."""

    data: DataParams = knob("where the raw archive comes from")
    prepare: PrepareParams = knob("decoding, validation split and subsets")
    model: ModelParams = knob("the CVAE")
    train: TrainParams = knob("its training")
    prior: PriorParams = knob("the latent density the samples are drawn from")
    refine: RefineParams = knob("the adversarial fine-tune of the decoder the samples are decoded with")
    sample: SampleParams = knob("the generated set evaluate scores")
    evaluate: EvaluateParams = knob("the metrics")
    mlflow: MlflowParams = knob("tracking and registry")

    @model_validator(mode="after")
    def _sampling_has_a_density(self) -> PipelineParams:
        if self.sample.latents == "fitted" and self.prior.kind == "none":
            raise ValueError(
                "sample.latents 'fitted' needs a fitted density but prior.kind is 'none'; "
                "set sample.latents: model or prior.kind: diffusion"
            )
        if self.prior.kind == "diffusion" and self.prior.denoiser == "conv" and self.model.latent_resolution == 1:
            raise ValueError(
                "prior.denoiser 'conv' needs a latent map but model.latent_resolution is 1 (a flat z); "
                "set prior.denoiser: mlp or model.latent_resolution: 8"
            )
        return self


def parse_params(raw: Any, source: str = DEFAULT_PARAMS_FILE) -> PipelineParams:
    """Validate an already-loaded params mapping."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections (data, prepare, ...), got {type(raw).__name__}")
    try:
        return PipelineParams.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, PipelineParams)) from None


def load_params(path: str | os.PathLike = DEFAULT_PARAMS_FILE) -> PipelineParams:
    """Read and validate ``params.yaml``; raise :class:`ConfigError` with a one-line reason."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found in {Path.cwd()}; run from the repository root")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not a text file (byte {exc.start} is not UTF-8); point --params at params.yaml"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {describe_yaml_error(exc)}") from None
    return parse_params(raw, str(path))
