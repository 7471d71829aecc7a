"""The ``sample`` stage's work: the sample set under ``sample.*``, its latents from the prior stage's
density (``sample.latents: fitted``) or from the model's own prior. Apart from :mod:`.sampling` (drawing
images from a model), so what ``train`` computes with does not include the prior's sampler."""

from __future__ import annotations

from .models import BaseCVAE
from .precision import resolve
from .samples import SampleSet
from .sampling import generate

#: what the images of ``decoder_output`` are, as said in the metrics and the MLflow run
DECODER_OUTPUT_MEANING = {"mean": "decoder mean", "sample": "draw from the likelihood"}


def draw_sample_set(model: BaseCVAE, classes: list[str], cfg, prior_file, model_sha256: str) -> SampleSet:
    """The ``sample`` stage's set under ``cfg`` (``SampleParams``): latents from the prior stage's
    density in ``prior_file`` (``cfg.latents == "fitted"``) or from the model's own prior."""
    from .errors import PipelineError
    from .prior import load_prior

    sampler, described = None, "model prior"
    if cfg.latents == "fitted":
        kind, prior = load_prior(prior_file, model_sha256)
        if prior is None:
            raise PipelineError(
                f"{prior_file} holds no density (prior.kind: {kind}); set sample.latents: model, or "
                "prior.kind: diffusion and run `dvc repro prior`"
            )
        prior.to(next(model.parameters()).device)
        sampler = prior.sampler(cfg.steps, cfg.guidance, cfg.solver)
        described = prior.describe(cfg.steps, cfg.guidance, cfg.solver)
    choice = resolve(cfg.precision, next(model.parameters()).device)
    print(f"sampling precision {choice.precision.name} ({choice.why})", flush=True)
    images, labels = generate(
        model,
        len(classes),
        cfg.per_class,
        cfg.temperature,
        cfg.seed,
        cfg.batch_size,
        latents=sampler,
        decoder_output=cfg.decoder_output,
        precision=choice.precision,
    )
    sampling = {
        "latents": described,
        "images": DECODER_OUTPUT_MEANING[cfg.decoder_output],
        "temperature": cfg.temperature,
        "precision": choice.precision.name,
    }
    return SampleSet(images, labels, list(classes), sampling)
