"""Stage ``prior``: the latent density ``sample`` draws from, fitted on the trained model's encodings of
the training set — a class-conditional diffusion model (``prior.kind: diffusion``), per-class Gaussian
mixtures (``gmm``) or nothing (``none``). Writes ``models/prior.pt``, its loss curves and a decoded
sample grid (DVC plots), ``reports/prior/metrics.json``, and logs to a run nested under the training's."""

from __future__ import annotations

from cvae_pipeline.config import load_params
from cvae_pipeline.prior.pipeline import fit_prior
from cvae_pipeline.stage import run_stage, stage_parser


def main() -> None:
    args = stage_parser(__doc__).parse_args()
    metrics = fit_prior(load_params(args.params))
    losses = f", loss {metrics['train_loss']:.4f} (val {metrics['val_loss']:.4f})" if "val_loss" in metrics else ""
    print(f"prior {metrics['kind']} fitted in {metrics['prior_seconds']:.0f}s{losses}")


if __name__ == "__main__":
    run_stage(main)
