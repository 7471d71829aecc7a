"""Probe the adversarial decoder refinement (``cvae_pipeline.refinement``) on the workspace's trained model.

    python benchmarks/decoder_refine.py --steps 1000 [--weight 0.5] [--max-weight 1] [--delay 200]
        [--reconstruction nll|l1] [--lr 1e-4] [--disc-lr 2e-4] [--disc-layers 2] --out models/refined.pt
    python benchmarks/prior_sweep.py --model models/refined.pt --floor --guidance 3   # score it

Run in a workspace where ``dvc repro prior fid_reference`` has run. Fine-tunes the decoder of
``models/model.pt`` on the training split (posterior draws, horizontal flips) against a PatchGAN, the
encoder frozen, and writes the refined model to ``--out`` in ``models/model.pt``'s format; the
workspace's prior stays valid for it (same encoder, same latents), so ``prior_sweep.py --model`` scores
its samples and floor beside the unrefined model's. Prints the losses every ``--every`` steps with the
seconds per step and the CPU. Run it alone: a concurrent heavy job slows both several times.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from cvae_pipeline import paths  # noqa: E402
from cvae_pipeline.data.prepared import load_prepared  # noqa: E402
from cvae_pipeline.models.artifact import load_trained_model, save_trained_model  # noqa: E402
from cvae_pipeline.refinement import DecoderRefiner, RefineSettings  # noqa: E402
from cvae_pipeline.runtime import cpu_description  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=RefineSettings.batch_size)
    parser.add_argument("--lr", type=float, default=RefineSettings.lr)
    parser.add_argument("--disc-lr", type=float, default=RefineSettings.disc_lr)
    parser.add_argument("--weight", type=float, default=RefineSettings.adversarial_weight)
    parser.add_argument("--max-weight", type=float, default=RefineSettings.max_weight)
    parser.add_argument("--delay", type=int, default=RefineSettings.delay)
    parser.add_argument("--reconstruction", choices=["nll", "l1"], default=RefineSettings.reconstruction)
    parser.add_argument("--disc-layers", type=int, default=RefineSettings.disc_layers)
    parser.add_argument("--disc-width", type=int, default=RefineSettings.disc_width)
    parser.add_argument("--seed", type=int, default=RefineSettings.seed)
    parser.add_argument("--every", type=int, default=100, help="print the losses every this many steps")
    parser.add_argument("--out", type=Path, required=True, help="where to write the refined model")
    args = parser.parse_args(argv)
    if args.out.resolve() == paths.MODEL_FILE.resolve():
        parser.error(f"--out must not overwrite {paths.MODEL_FILE}, the model DVC tracks")

    settings = RefineSettings(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        disc_lr=args.disc_lr,
        adversarial_weight=args.weight,
        max_weight=args.max_weight,
        delay=args.delay,
        reconstruction=args.reconstruction,
        disc_layers=args.disc_layers,
        disc_width=args.disc_width,
        seed=args.seed,
    )
    model, classes = load_trained_model(paths.MODEL_FILE, "cpu")
    train = load_prepared(paths.PREPARED_DIR, "train")
    refiner = DecoderRefiner(model, settings, train.images, train.labels, torch.device("cpu"))
    print(f"{cpu_description()}; torch {torch.__version__}; {settings}", flush=True)
    print("| step | reconstruction | generator | discriminator | weight | real logit | fake logit | s/step |")
    print("|---|---|---|---|---|---|---|---|")
    window: list = []
    start = time.perf_counter()

    def report(record) -> None:
        nonlocal start
        window.append(record)
        if record.step % args.every and record.step != settings.steps:
            return
        mean = {k: sum(getattr(r, k) for r in window) / len(window) for k in vars(record) if k != "step"}
        seconds = (time.perf_counter() - start) / len(window)
        print(
            f"| {record.step} | {mean['reconstruction']:.4f} | {mean['generator']:.3f} | {mean['discriminator']:.3f} | "
            f"{mean['weight']:.3f} | {mean['real_logit']:.2f} | {mean['fake_logit']:.2f} | {seconds:.2f} |",
            flush=True,
        )
        window.clear()
        start = time.perf_counter()

    refiner.run(on_step=report)
    save_trained_model(args.out, refiner.refined, model_params_of(paths.MODEL_FILE), classes)
    print(f"refined model written to {args.out}")
    return 0


def model_params_of(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model_params"]


if __name__ == "__main__":
    sys.exit(main())
