"""Where the samples stand between the latent densities and the floor, on one trained model.

    python benchmarks/prior_sweep.py [--per-class 200] [--guidance 1 2 3 4 5] [--solver ddim dpmpp_2m]
        [--steps 10 20 50] [--gmm] [--model-prior] [--floor]

Run in a workspace where ``dvc repro sample`` has run (``models/refined.pt``, ``models/prior.pt``,
``data/fid_reference``); it decodes with the model ``sample`` decodes with (the refined decoder).
For each row it draws ``--per-class`` images per class
with the same seed, computes their Inception features once and scores them like ``evaluate``: FID
(FID-2k at the default 200 per class, against the reference statistics), KID, class consistency,
precision and recall. Rows:

* ``diffusion g=G``: the workspace's fitted prior at guidance G, temperature 1, for every ``--solver`` and
  ``--steps`` (default: ``sample.solver`` at ``sample.steps``) — the FID-vs-steps curve;
* ``gmm``: 10-component per-class GMMs fitted here on the encoded training set, temperature 0.85
  (the pipeline's GMM default before the diffusion prior);
* ``model prior``: z ~ N(0, I);
* ``floor: reconstructions`` / ``floor: posterior draws``: as many stratified test images decoded at
  their posterior mean / at a draw z ~ q(z|x, y) (``evaluate.reconstruction_fid``'s figures).

One Inception network, loaded once; every row's seconds (drawing + decoding, then features) are
printed with the CPU. Run it alone: a concurrent heavy job slows both several times.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from cvae_pipeline import paths  # noqa: E402
from cvae_pipeline.batches import BatchStream  # noqa: E402
from cvae_pipeline.config import load_params  # noqa: E402
from cvae_pipeline.data.prepared import load_prepared  # noqa: E402
from cvae_pipeline.data.sources import file_checksum  # noqa: E402
from cvae_pipeline.data.splits import stratified_subset  # noqa: E402
from cvae_pipeline.metrics.class_consistency import LinearProbe  # noqa: E402
from cvae_pipeline.metrics.evaluation import sample_quality  # noqa: E402
from cvae_pipeline.metrics.fid import Statistics  # noqa: E402
from cvae_pipeline.metrics.inception import InceptionFeatures  # noqa: E402
from cvae_pipeline.metrics.reference import FEATURES_FILE, PROBE_FILE, STATS_FILE, FeatureSet  # noqa: E402
from cvae_pipeline.models.artifact import load_trained_model  # noqa: E402
from cvae_pipeline.prior import ClassGMM, load_prior  # noqa: E402
from cvae_pipeline.prior.artifact import DiffusionPrior  # noqa: E402
from cvae_pipeline.prior.diffusion import GaussianDiffusion  # noqa: E402
from cvae_pipeline.refinement.artifact import load_decoding_model  # noqa: E402
from cvae_pipeline.runtime import cpu_description  # noqa: E402
from cvae_pipeline.sampling import generate, reconstruct_set  # noqa: E402

GMM_COMPONENTS, GMM_TEMPERATURE = 10, 0.85
WHOLE_SCHEDULE = (0.0, 1.0)


class GuidedInInterval(GaussianDiffusion):
    """The prior's diffusion with guidance only at the noise levels in ``interval`` (fractions t / (timesteps
    - 1), 0 clean, 1 pure noise); elsewhere a step is plain conditional (guidance 1). Guidance at the noisiest
    steps pulls every draw of a class toward the same few modes (Kynkaanniemi et al. 2024, "Applying guidance
    in a limited interval improves sample and distribution quality in diffusion models"). Measured, not
    shipped: it did not pay on this prior (docs/results.md)."""

    def __init__(self, diffusion: GaussianDiffusion, interval: tuple[float, float]):
        super().__init__(diffusion.timesteps, diffusion.prediction)
        self.interval = interval

    def _guided(self, denoiser, x, t, y, guidance):
        level = int(t[0]) / max(1, self.timesteps - 1)
        inside = self.interval[0] <= level <= self.interval[1]
        return super()._guided(denoiser, x, t, y, guidance if inside else 1.0)


def in_interval(prior: DiffusionPrior, interval: tuple[float, float]) -> DiffusionPrior:
    """``prior`` sampling with guidance only in ``interval``; the prior itself where that is the whole schedule."""
    if tuple(interval) == WHOLE_SCHEDULE:
        return prior
    return DiffusionPrior(prior.denoiser, GuidedInInterval(prior.diffusion, interval), prior.mean, prior.scale)


@torch.no_grad()
def encode_central(model, images: np.ndarray, labels: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """The posterior's central latent of every image (uint8 [N, 3, 32, 32]), [N, latent_dim]: the GMM row's
    training set."""
    model.eval()
    batches = BatchStream(images, labels, batch_size, torch.device("cpu"), shuffle=False)
    return np.concatenate([model.encode_latents(x, y).numpy() for x, y in batches])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--guidance", type=float, nargs="*", default=[1.0, 2.0, 3.0, 4.0, 5.0])
    parser.add_argument("--steps", type=int, nargs="*", default=None, help="sampler steps (default: sample.steps)")
    parser.add_argument("--solver", nargs="*", default=None, help="ddim, dpmpp_2m (default: sample.solver)")
    parser.add_argument(
        "--interval",
        type=float,
        nargs=2,
        action="append",
        metavar=("LOW", "HIGH"),
        help="guidance only at noise levels LOW..HIGH (fractions of the schedule, 0 clean, 1 noise); repeatable",
    )
    parser.add_argument("--gmm", action="store_true", help="also the per-class GMM row")
    parser.add_argument("--model-prior", action="store_true", help="also the N(0, I) row")
    parser.add_argument("--floor", action="store_true", help="also the two floor rows")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--decoder",
        choices=["sample", "trained"],
        default="sample",
        help="decode with the model sample decodes with (models/refined.pt) or the trained one (models/model.pt): "
        "the refinement's effect on one model and prior",
    )
    args = parser.parse_args(argv)

    params = load_params()
    solvers, step_counts = args.solver or [params.sample.solver], args.steps or [params.sample.steps]
    torch.manual_seed(args.seed)
    if args.decoder == "trained":
        decoder_file = paths.MODEL_FILE
        model, classes = load_trained_model(decoder_file, "cpu")
        model_sha = file_checksum(decoder_file, "sha256")  # what the prior was fitted on: this very file
    else:
        decoder_file = paths.REFINED_MODEL_FILE
        model, classes, model_sha = load_decoding_model("cpu")
    _, prior = load_prior(paths.PRIOR_FILE, model_sha)
    reference = FeatureSet.load(paths.FID_REFERENCE_DIR / FEATURES_FILE)
    reference_stats = Statistics.load(paths.FID_REFERENCE_DIR / STATS_FILE)
    probe = LinearProbe.load(paths.FID_REFERENCE_DIR / PROBE_FILE)
    inception = InceptionFeatures(torch.device("cpu"), params.evaluate.batch_size)
    n = args.per_class * len(classes)
    print(
        f"{cpu_description()}; torch {torch.__version__}; {n} images per row, seed {args.seed}; decoder {decoder_file}",
        flush=True,
    )

    rows: list[tuple[str, callable]] = []
    for interval in args.interval or [WHOLE_SCHEDULE]:
        span = "" if tuple(interval) == WHOLE_SCHEDULE else f" in [{interval[0]:g}, {interval[1]:g}]"
        for solver, steps, g in itertools.product(solvers, step_counts, args.guidance):
            rows.append(
                (
                    f"diffusion g={g:g}{span} ({solver}, {steps} steps)",
                    lambda g=g, i=tuple(interval), n=steps, s=solver: draw(
                        model, classes, args, in_interval(prior, i).sampler(n, g, s)
                    ),
                )
            )
    if args.gmm:
        rows.append((f"gmm ({GMM_COMPONENTS}/class, t={GMM_TEMPERATURE})", lambda: draw_gmm(model, classes, args)))
    if args.model_prior:
        rows.append(("model prior N(0, I)", lambda: draw(model, classes, args, None)))
    if args.floor:
        test = load_prepared(paths.PREPARED_DIR, "test")
        idx = stratified_subset(test.labels, min(n, len(test.labels)), seed=0, what="floor images")
        for name, draws in (("floor: reconstructions", False), ("floor: posterior draws", True)):
            rows.append(
                (
                    name,
                    lambda draws=draws: (
                        reconstruct_set(model, test.images[idx], test.labels[idx], posterior_draws=draws),
                        test.labels[idx],
                    ),
                )
            )

    print("| latents | FID | KID | class consistency | precision | recall | draw s | features s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, make in rows:
        start = time.perf_counter()
        images, labels = make()
        drawn = time.perf_counter() - start
        fake = FeatureSet(inception(images, desc=name), labels, classes)
        featured = time.perf_counter() - start - drawn
        m = sample_quality(reference, reference_stats, probe, fake, params.evaluate)
        print(
            f"| {name} | {m['fid']:.2f} | {m['kid_mean']:.4f} ± {m['kid_std']:.4f} | {m['class_consistency']:.3f} | "
            f"{m['precision']:.3f} | {m['recall']:.3f} | {drawn:.0f} | {featured:.0f} |",
            flush=True,
        )
    return 0


def draw(model, classes, args, sampler, temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    return generate(model, len(classes), args.per_class, temperature, args.seed, progress=False, latents=sampler)


def draw_gmm(model, classes, args) -> tuple[np.ndarray, np.ndarray]:
    train = load_prepared(paths.PREPARED_DIR, "train")
    latents = encode_central(model, train.images, train.labels)
    gmm = ClassGMM.fit(latents, train.labels, len(classes), GMM_COMPONENTS, args.seed)
    return draw(model, classes, args, gmm, GMM_TEMPERATURE)


if __name__ == "__main__":
    sys.exit(main())
