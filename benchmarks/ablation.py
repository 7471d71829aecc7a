"""The experiments of docs/results.md: one queued DVC experiment per row (the measured figures and
what they say are in docs/results.md; this file holds only what each row runs).

Every row trains for ``ABLATION`` 's short budget (1 epoch of the 45,000 training images, KL and lr
warm-up shortened to fit it) and is scored on 2,000 samples (200 per class) against the 10,000
test images' Inception statistics, with the likelihood bounds on 2,000 test images. Rows go to
their own MLflow experiment (``cvae-ablation``) so ``cvae report --experiment cvae-ablation``
prints the table. The headline rows (``--headline``) use the FID-10k protocol (1,000 samples per class) in the
main experiment, each with the model, epochs and temperature it names (``head-map8x4`` is
``params.yaml``'s default). The decoder probes (``--probes``) ask which change to the default's model
makes a better *decoder*: each is scored on 2,000 samples and on the reconstruction FID of 2,000 test
images (``evaluate.reconstruction_fid``), the floor a better prior or GMM could not get under.

    python benchmarks/ablation.py                 # queue every ablation row
    python benchmarks/ablation.py --only mlp conv # queue some
    python benchmarks/ablation.py --headline      # queue the FID-10k rows (baseline, conv, resnet, ...)
    python benchmarks/ablation.py --probes        # queue the decoder probes (FID-2k + reconstruction FID-2k)
    dvc queue start -j 1                          # one at a time: two heavy runs slow each other 5-10x
    python benchmarks/ablation.py --table         # docs/results.md's tables, from the MLflow runs
    cvae report --experiment cvae-ablation        # every run, every differing param

Queued experiments snapshot the workspace when they are queued; run this from a clean checkout
of the commit whose numbers you want.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

#: how a row draws its latents, pinned so that params.yaml's sampling default does not change a row:
#: the model's own N(0, I) prior (no prior stage work), or the prior stage's per-class GMM
MODEL_LATENTS = ["prior.kind=none", "sample.latents=model"]
GMM_LATENTS = ["prior.kind=gmm", "sample.latents=fitted"]


def merged(*overrides: list[str]) -> list[str]:
    """``key=value`` lists combined, a later list's value winning for the same key."""
    out: dict[str, str] = {}
    for items in overrides:
        out.update(item.split("=", 1) for item in items)
    return [f"{key}={value}" for key, value in out.items()]


#: the short protocol shared by every ablation row, on the conv model and KL weight the table was measured
#: with (pinned, so that a later change of params.yaml's defaults does not change the rows)
ABLATION = [
    "refine.steps=0",  # measured before the decoder refinement existed
    "model.backbone=conv",
    "model.width=64",
    "model.latent_dim=64",
    "model.latent_resolution=1",
    "train.beta=1.0",
    "train.epochs=1",
    "train.warmup_epochs=0.1",
    "train.kl_warmup_epochs=0.3",
    "sample.per_class=200",
    *MODEL_LATENTS,
    "sample.temperature=1.0",
    "evaluate.likelihood_images=2000",
    "evaluate.iw_samples=8",
    "mlflow.experiment=cvae-ablation",
    "mlflow.registered_model=null",
]

#: the classic CVAE of the original write-up
CLASSIC = [
    "model.backbone=mlp",
    "model.width=128",
    "model.latent_dim=32",
    "model.latent_resolution=1",
    "model.conditioning=concat",
    "model.likelihood=bernoulli",
    "train.beta=1.0",
]

#: row name -> overrides on top of params.yaml and ABLATION (a row's value wins)
ROWS: dict[str, list[str]] = {
    "mlp": CLASSIC,
    "conv": [],
    "resnet": ["model.backbone=resnet", "model.width=32"],
    "bernoulli": ["model.likelihood=bernoulli"],
    "gaussian-fixed": ["model.gaussian_variance=fixed"],
    "gaussian-pixel": ["model.gaussian_variance=pixel"],
    "logistic-mixture": ["model.likelihood=logistic_mixture"],
    "iaf": ["model.flow.posterior=iaf", "model.flow.steps=4"],
    "planar": ["model.flow.posterior=planar", "model.flow.steps=4"],
    "flow-prior": ["model.prior=flow"],
    "gmm": GMM_LATENTS,
}

#: the resnet of the headline rows (width 32, 1 block per resolution) at the FID-10k protocol
RESNET_10K = [
    "model.backbone=resnet",
    "model.width=32",
    "model.latent_dim=64",
    "model.latent_resolution=1",
    "sample.per_class=1000",
    "sample.temperature=1.0",
    *GMM_LATENTS,
]

#: the conv diffusion prior and its sampling as params.yaml has them since 6f9cccd
CONV_PRIOR = [
    "prior.kind=diffusion",
    "prior.denoiser=conv",
    "prior.width=64",
    "prior.blocks=4",
    "prior.epochs=8",
    "prior.augment=hflip",
    "sample.latents=fitted",
    "sample.solver=ddim",
    "sample.steps=50",
    "sample.guidance=3.0",
    "sample.temperature=1.0",
]

#: the 8x8x8-latent VAE and its conv prior as params.yaml has them since 4ac0189 (all but the prior's length)
LATENT_8X8X8 = merged(
    CONV_PRIOR,
    [
        "model.latent_dim=512",
        "model.latent_resolution=8",
        "train.epochs=7",
        "train.beta=0.5",
        "train.seed=0",
        "prior.seed=0",
        "sample.solver=dpmpp_2m",
        "sample.steps=10",
    ],
)

#: seed 1's 8x8x8 VAE with the conv prior twice as wide (128) for 14 epochs, its bound on 1,000 test images
WIDE_PRIOR = merged(
    RESNET_10K,
    LATENT_8X8X8,
    ["train.seed=1", "prior.width=128", "prior.epochs=14", "evaluate.likelihood_images=1000"],
)

#: FID-10k rows, in the main MLflow experiment. Each pins the training it was measured with, so the
#: rows stay the same runs whatever params.yaml's defaults become.
HEADLINE: dict[str, list[str]] = {
    # the classic CVAE trained by the original write-up's own recipe: Adam 1e-3 constant, batch 64,
    # 10 epochs, no EMA, no warm-ups, no clipping, N(0, I) draws (only its defects fixed, see models/mlp.py)
    "baseline": merged(
        CLASSIC,
        [
            "train.epochs=10",
            "train.batch_size=64",
            "train.optimizer=adam",
            "train.lr=0.001",
            "train.weight_decay=0.0",
            "train.lr_schedule=constant",
            "train.warmup_epochs=0",
            "train.kl_warmup_epochs=0",
            "train.free_bits=0.0",
            "train.grad_clip=null",
            "train.ema_decay=null",
            "train.augment=none",
            "sample.per_class=1000",
            *MODEL_LATENTS,
            "sample.temperature=1.0",
            "sample.decoder_output=mean",
        ],
    ),
    # the same model under the pipeline's recipe of the time (8 epochs, batch 128, AdamW with warm-up and
    # cosine decay, KL warm-up, clipping, EMA): the row the write-up's recipe replaced
    "baseline-pipeline-recipe": merged(
        CLASSIC,
        [
            "train.epochs=8",
            "train.batch_size=128",
            "train.optimizer=adamw",
            "train.lr=0.001",
            "train.lr_schedule=cosine",
            "train.warmup_epochs=0.5",
            "train.kl_warmup_epochs=1.0",
            "train.grad_clip=100.0",
            "train.ema_decay=0.999",
            "sample.per_class=1000",
            *MODEL_LATENTS,
            "sample.temperature=1.0",
        ],
    ),
    # the conv default of the time (its FID-10k run was named head-default)
    "conv": [
        "model.backbone=conv",
        "model.width=64",
        "model.latent_dim=64",
        "model.latent_resolution=1",
        "train.epochs=8",
        "train.beta=1.0",
        "sample.per_class=1000",
        "sample.temperature=1.0",
        *GMM_LATENTS,
    ],
    # the ablation's best backbone per epoch with GMM sampling, 20 epochs
    "resnet": RESNET_10K + ["train.epochs=20", "train.beta=1.0"],
    # the same model for 7 epochs
    "resnet-7ep": RESNET_10K + ["train.epochs=7", "train.beta=1.0"],
    # the "resnet" row with half the KL weight: a higher-rate autoencoder whose less regular aggregate
    # posterior the ex-post GMM is there to model (the RAE / two-stage VAE argument)
    "resnet-beta05": RESNET_10K + ["train.epochs=20", "train.beta=0.5"],
    # 7 epochs at that KL weight
    "resnet-7ep-beta05": RESNET_10K + ["train.epochs=7", "train.beta=0.5"],
    # "resnet-beta05" for 28 epochs with random horizontal flips against the decoder's overfit
    "resnet-28ep-hflip": RESNET_10K + ["train.epochs=28", "train.beta=0.5", "train.augment=hflip"],
    # sampling-only variants of "resnet-beta05" (the same weights): re-sample that experiment instead of
    # queueing them (`dvc exp apply head-resnet-beta05 && dvc exp run -n head-resnet-beta05-t085 -S ...`);
    # queued from here they train the model again first
    "resnet-beta05-t085": merged(RESNET_10K, ["train.epochs=20", "train.beta=0.5", "sample.temperature=0.85"]),
    "resnet-beta05-t07": merged(RESNET_10K, ["train.epochs=20", "train.beta=0.5", "sample.temperature=0.7"]),
    "resnet-beta05-gmm25": RESNET_10K + ["train.epochs=20", "train.beta=0.5", "prior.gmm_components=25"],
    # the 7-epoch model at temperature 0.85
    "resnet-7ep-beta05-t085": merged(RESNET_10K, ["train.epochs=7", "train.beta=0.5", "sample.temperature=0.85"]),
    # the 7-epoch training with z as a 4-channel 8x8 latent map (params.yaml's default); probe-map8x4-2k's
    # model can be re-sampled for it: `dvc exp apply probe-map8x4-2k && dvc exp run -n head-map8x4
    # -S sample.per_class=1000 -S evaluate.likelihood_images=null -S evaluate.reconstruction_fid=false`
    "map8x4": merged(
        RESNET_10K,
        [
            "model.latent_dim=256",
            "model.latent_resolution=8",
            "train.epochs=7",
            "train.beta=0.5",
            "sample.temperature=0.85",
        ],
    ),
    # params.yaml's default: the map8x4 model with the diffusion prior (prior.*, sample.steps and
    # sample.guidance as params.yaml has them)
    "map8x4-diffusion": merged(
        RESNET_10K,
        [
            "model.latent_dim=256",
            "model.latent_resolution=8",
            "train.epochs=7",
            "train.beta=0.5",
            "prior.kind=diffusion",
            "sample.latents=fitted",
        ],
    ),
    # the map8x4 model with the conv diffusion prior as measured for the README (params.yaml's default at
    # 6f9cccd), its denoiser, length and sampling pinned
    "map8x4-conv-prior": merged(
        RESNET_10K,
        [
            "model.latent_dim=256",
            "model.latent_resolution=8",
            "train.epochs=7",
            "train.beta=0.5",
            "train.seed=1",
            *CONV_PRIOR,
        ],
    ),
    # the best configuration on the 4x8x8 latent: the VAE trained 16 epochs, the conv prior twice as wide
    # for 16 epochs; ~41 CPU-minutes of training on the AMX Xeon
    "map8x4-16ep-conv128": merged(
        RESNET_10K,
        [
            "model.latent_dim=256",
            "model.latent_resolution=8",
            "train.epochs=16",
            "train.beta=0.5",
            "train.seed=0",
            *CONV_PRIOR,
            "prior.width=128",
            "prior.epochs=16",
        ],
    ),
    # params.yaml's default since 4ac0189: z an 8x8x8 map, the conv prior 16 epochs, DPM-Solver++(2M) 10 steps
    "latent8x8x8-prior16": merged(RESNET_10K, LATENT_8X8X8, ["prior.epochs=16"]),
    # the best with the width-64 prior: the same VAE, its prior trained 28 epochs (~85 min of training on
    # the AVX2 EPYC); with its floor at FID-10k
    "latent8x8x8-prior28": merged(
        RESNET_10K,
        LATENT_8X8X8,
        ["prior.epochs=28", "evaluate.reconstruction_fid=true", "evaluate.likelihood_images=1000"],
    ),
    # the default's second training seed (its prior, sampling and scoring as the default's)
    "latent8x8x8-prior16-seed1": merged(RESNET_10K, LATENT_8X8X8, ["prior.epochs=16", "train.seed=1"]),
    # its VAE with the conv prior twice as wide for 14 epochs (~21 + ~44 min of training, AVX-512 Xeon, fp32)
    "latent8x8x8-seed1-prior128x14": WIDE_PRIOR,
    # the best configuration measured: the same sampled at guidance 2.5; then its prior re-fitted from another seed
    "latent8x8x8-seed1-prior128x14-g2.5": merged(WIDE_PRIOR, ["sample.guidance=2.5"]),
    "latent8x8x8-seed1-prior128x14-g2.5-priorseed1": merged(WIDE_PRIOR, ["sample.guidance=2.5", "prior.seed=1"]),
    # the map8x4 row (4x8x8 latent, per-class GMM) trained 16 epochs
    "map8x4-16ep": merged(
        RESNET_10K,
        [
            "model.latent_dim=256",
            "model.latent_resolution=8",
            "train.epochs=16",
            "train.beta=0.5",
            "sample.temperature=0.85",
        ],
    ),
}

#: every headline row was measured before the decoder refinement existed: each queues with it off
HEADLINE = {name: merged(["refine.steps=0"], overrides) for name, overrides in HEADLINE.items()}


#: the default's model and sampling, scored cheaply: FID-2k of its samples and of 2,000 test reconstructions
PROBE = [
    "refine.steps=0",  # measured before the decoder refinement existed
    "model.backbone=resnet",
    "model.width=32",
    "model.latent_dim=64",
    "model.latent_resolution=1",
    "train.epochs=7",
    "train.beta=0.5",
    "sample.temperature=0.85",
    *GMM_LATENTS,
    "sample.per_class=200",
    "evaluate.reconstruction_fid=true",
    "evaluate.likelihood_images=2000",
]

#: decoder probes, in the main MLflow experiment: one change each to the default's model (``probe-default-2k``).
#: "default-2k" and "20ep-2k" (head-resnet-beta05's training) can be measured by re-sampling those
#: models; queued from here they train first.
PROBES: dict[str, list[str]] = {
    "default-2k": PROBE,
    # more information in the latent: does a higher-rate code give sharper reconstructions?
    "beta02-2k": merged(PROBE, ["train.beta=0.2"]),
    # more decoder (and encoder) capacity: 4.4 M parameters
    "w48-2k": merged(PROBE, ["model.width=48"]),
    # twice the optimizer steps per epoch at about the same compute: does the decoder want more updates?
    "bs64-2k": merged(PROBE, ["train.batch_size=64"]),
    "20ep-2k": merged(PROBE, ["train.epochs=20"]),
    # a latent map instead of a vector: local information for the decoder. The same 64 numbers as
    # one 8x8 channel, and 256 as four (the one probe that also moves latent_dim: a map's channels)
    "map8-2k": merged(PROBE, ["model.latent_resolution=8"]),
    "map8x4-2k": merged(PROBE, ["model.latent_resolution=8", "model.latent_dim=256"]),
}


def queue(name: str, overrides: list[str], dry_run: bool) -> None:
    cmd = ["dvc", "exp", "run", "--queue", "-n", name]
    for item in overrides:
        cmd += ["-S", item]
    print(" ".join(cmd))
    if not dry_run:
        subprocess.run(cmd, check=True)


#: table columns: MLflow metric -> header
COLUMNS = {
    "fid": "FID",
    "kid_mean": "KID",
    "class_consistency": "class consistency",
    "precision": "precision",
    "recall": "recall",
    "test_neg_elbo_bits_per_dim": "-ELBO bits/dim",
    "test_iw_bound_bits_per_dim": "IW bits/dim",
    "test_neg_elbo_nats": "-ELBO nats",
    "final_train_seconds": "train s",
}


#: the decoder probes' columns: the two FIDs side by side, and what the latent carries
PROBE_COLUMNS = {
    "fid": "FID-2k",
    "reconstruction_fid": "reconstruction FID-2k",
    "kid_mean": "KID",
    "recon_psnr_db": "PSNR dB",
    "final_train_kl": "KL nats",
    "test_neg_elbo_nats": "-ELBO nats",
    "final_train_seconds": "train s",
}


def results_table(experiment: str, names: list[str], columns: dict[str, str] = COLUMNS) -> str:
    """A markdown table of the newest finished evaluation of each experiment name, in ``names`` order (an
    evaluation's run is named ``<experiment> · evaluate`` and tagged ``dvc_experiment``; runs of older
    versions of the pipeline carry the experiment's name itself)."""
    import mlflow

    from cvae_pipeline import tracking

    tracking.configure_store()
    found = mlflow.get_experiment_by_name(experiment)
    runs = mlflow.MlflowClient().search_runs([found.experiment_id], max_results=5000) if found else []
    newest = {}
    for run in sorted(runs, key=lambda r: r.info.start_time):
        if run.info.status == "FINISHED" and "fid" in run.data.metrics:
            newest[run.data.tags.get("dvc_experiment") or run.info.run_name] = run
    lines = ["| row | " + " | ".join(columns.values()) + " | samples |", "|---" * (len(columns) + 2) + "|"]
    for name in names:
        run = newest.get(name)
        if run is None:
            lines.append(f"| {name} | not run |" + " |" * len(columns))
            continue
        m = run.data.metrics
        cells = []
        for key in columns:
            value = m.get(key)
            cells.append(
                "—"
                if value is None
                else f"{value:.0f}"
                if key in ("final_train_seconds", "final_train_kl")
                else f"{value:.2f}"
                if key in ("fid", "reconstruction_fid", "test_neg_elbo_nats", "recon_psnr_db")
                else f"{value:.3f}"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {run.data.tags.get('samples.latents', 'model prior')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--only", nargs="+", choices=sorted(ROWS.keys() | HEADLINE.keys() | PROBES.keys()), help="queue only these rows"
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--headline", action="store_true", help="queue the FID-10k headline rows instead")
    which.add_argument("--probes", action="store_true", help="queue the decoder probes instead")
    parser.add_argument("--prefix", default="", help="prefix of the experiment names (default: abl-/head-/probe-)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    parser.add_argument("--table", action="store_true", help="print the results as markdown tables instead")
    args = parser.parse_args(argv)
    group, prefix = (HEADLINE, "head-") if args.headline else (PROBES, "probe-") if args.probes else (ROWS, "abl-")
    if args.only and not args.table and set(args.only) - group.keys():
        parser.error(
            f"not in this group: {', '.join(sorted(set(args.only) - group.keys()))} "
            "(headline rows need --headline, probes --probes)"
        )
    if args.table:
        print(f"Ablation ({', '.join(ABLATION[:6])}):\n")
        print(results_table("cvae-ablation", [f"{args.prefix or 'abl-'}{name}" for name in ROWS]))
        print("\nHeadline (FID-10k):\n")
        print(results_table("cvae-cifar10", [f"{args.prefix or 'head-'}{name}" for name in HEADLINE]))
        print("\nDecoder probes (FID-2k, reconstruction FID on 2,000 test images):\n")
        print(results_table("cvae-cifar10", [f"{args.prefix or 'probe-'}{name}" for name in PROBES], PROBE_COLUMNS))
        return 0
    if group is ROWS:
        for name in args.only or ROWS:
            queue(f"{args.prefix or prefix}{name}", merged(ABLATION, ROWS[name]), args.dry_run)
    else:
        for name, overrides in group.items():
            if args.only is None or name in args.only:
                queue(f"{args.prefix or prefix}{name}", overrides, args.dry_run)
    print("now: dvc queue start -j 1   (then `dvc queue status`, `cvae report --experiment cvae-ablation`)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
