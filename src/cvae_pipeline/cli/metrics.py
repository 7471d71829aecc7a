"""``cvae fid`` and ``cvae kid``: pytorch-fid's CLI (``python -m pytorch_fid A B``), the interface users know."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import FEATURE_PRECISIONS, INCEPTION_ENGINES
from ..errors import PipelineError


def _features_of(image_set, args: argparse.Namespace, extractor_box: list):
    """Inception features of an image set (the network is loaded once, on first need)."""
    from ..metrics.inception import InceptionFeatures
    from ..runtime import resolve_device

    if image_set.features is not None:
        return image_set.features
    if not extractor_box:
        device = resolve_device(args.device, "--device")
        extractor_box.append(InceptionFeatures(device, args.batch_size, engine=args.engine, engine_key="--engine"))
    return extractor_box[0](image_set.images, desc=f"inception {image_set.source.name}")


def cmd_fid(args: argparse.Namespace) -> int:
    """FID between two image sets (pytorch-fid's convention and numbers).

    Sets given as images keep their features, so a small set takes the exact low-rank route
    (``fid_from_features`` / ``fid_against``) instead of two 2,048 x 2,048 eigendecompositions."""
    from ..metrics.fid import Statistics, fid_against, fid_from_features, frechet_distance
    from ..metrics.image_sets import load_image_set

    if args.precision == "bf16":
        return _fid_bf16_screening(args)
    box: list = []
    sets: list = []  # features (an array) or saved statistics, per path
    for path in args.paths:
        image_set = load_image_set(path)
        if image_set.stats is not None:
            sets.append(Statistics(*image_set.stats, count=-1))
        else:
            sets.append(_features_of(image_set, args, box))
    if args.save_stats:
        first = sets[0]
        (first if isinstance(first, Statistics) else Statistics.of(first)).save(args.save_stats)
        print(f"saved statistics of {args.paths[0]} to {args.save_stats}")
    if len(sets) == 2:
        a, b = sets
        if isinstance(a, Statistics) and isinstance(b, Statistics):
            value = frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
        elif isinstance(a, Statistics) or isinstance(b, Statistics):  # FID is symmetric
            features, stats = (b, a) if isinstance(a, Statistics) else (a, b)
            value = fid_against(features, stats)
        else:
            value = fid_from_features(a, b)
        print(f"FID: {value:.6f}")
    return 0


def _fid_bf16_screening(args: argparse.Namespace) -> int:
    """FID with bf16 Inception features, printed with its deviation from fp32 measured on this very call.

    For quick screening only: it is printed, never saved (no ``--save-stats``; saved statistics and
    features are fp32 records and are not mixed in). The deviation: both precisions' FIDs on the same
    ``--check-images`` random images of each set (seed 0), so the one figure says how far bf16 moved
    *these* images' FID."""
    import time

    import numpy as np

    from ..metrics.fid import fid_from_features
    from ..metrics.image_sets import load_image_set
    from ..metrics.inception import InceptionFeatures
    from ..runtime import resolve_device

    if args.save_stats:
        raise PipelineError("--save-stats writes fp32 statistics; bf16 features are for screening only: drop one")
    images = []
    for path in args.paths:
        image_set = load_image_set(path)
        if image_set.images is None:
            raise PipelineError(
                f"{path}: --precision bf16 needs images; saved statistics and features are fp32 and are not mixed in"
            )
        images.append(image_set.images)
    device = resolve_device(args.device, "--device")
    screening = InceptionFeatures(device, args.batch_size, engine=args.engine, engine_key="--engine", precision="bf16")
    started = time.perf_counter()
    bf16 = [screening(x, desc=f"inception bf16 {p}") for x, p in zip(images, args.paths)]
    seconds = time.perf_counter() - started
    value = fid_from_features(*bf16)
    rng = np.random.default_rng(0)
    picks = [np.sort(rng.choice(len(x), min(args.check_images, len(x)), replace=False)) for x in images]
    exact = InceptionFeatures(device, args.batch_size, engine=screening.engine, engine_key="--engine")
    fp32 = [exact(x[i], desc=f"inception fp32 check {p}") for x, i, p in zip(images, picks, args.paths)]
    check_bf16 = fid_from_features(*(f[i] for f, i in zip(bf16, picks)))
    check_fp32 = fid_from_features(*fp32)
    deviation = check_bf16 - check_fp32
    print(f"FID (bf16 features, {screening.engine}; screening only, not pytorch-fid's): {value:.6f}")
    print(
        f"  deviation measured now: on {len(picks[0])} and {len(picks[1])} random images of the two sets, FID "
        f"{check_bf16:.4f} with bf16 features vs {check_fp32:.4f} with fp32: {deviation:+.4f} "
        f"({100 * deviation / check_fp32:+.2f} %); bf16 features of all {sum(map(len, images))} images: {seconds:.0f} s"
    )
    return 0


def cmd_kid(args: argparse.Namespace) -> int:
    """KID (unbiased, mean and std over subsets) between two image sets."""
    from ..metrics.image_sets import load_image_set
    from ..metrics.kid import kid

    box: list = []
    features = []
    for path in args.paths:
        image_set = load_image_set(path)
        if image_set.stats is not None:
            raise PipelineError(f"{path}: KID needs images or features, not mu/sigma statistics")
        features.append(_features_of(image_set, args, box))
    mean, std = kid(features[0], features[1], args.subsets, args.subset_size, args.seed)
    print(f"KID: {mean:.6f} ± {std:.6f}")
    return 0


def _add_image_set_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--batch-size", type=int, default=50, help="Inception batch size (default: %(default)s)")
    p.add_argument(
        "--engine",
        default="auto",
        choices=INCEPTION_ENGINES,
        help="what runs the Inception network, in fp32 (default: %(default)s = OpenVINO on the CPU)",
    )


def check_fid(args: argparse.Namespace) -> str | None:
    """What argparse cannot say about ``fid``'s arguments; None when they fit."""
    if len(args.paths) > 2 or (len(args.paths) == 1 and not args.save_stats):
        return "fid takes PATH_A PATH_B, or one PATH with --save-stats OUT.npz"
    if args.precision == "bf16" and (len(args.paths) != 2 or args.check_images < 2):
        return "fid --precision bf16 takes PATH_A PATH_B and --check-images of at least 2"
    return None


def register(sub) -> None:
    paths_help = "a folder of images (searched recursively), a .npy/.npz of uint8 images, or saved statistics"
    p = sub.add_parser("fid", help=cmd_fid.__doc__, description=cmd_fid.__doc__)
    p.add_argument("paths", nargs="+", metavar="PATH", help=f"one or two of: {paths_help}")
    p.add_argument("--save-stats", type=Path, metavar="OUT.npz", help="save the first set's mu/sigma here")
    _add_image_set_options(p)
    p.add_argument(
        "--precision",
        default="fp32",
        choices=FEATURE_PRECISIONS,
        help="fp32: pytorch-fid's features (default); bf16: faster screening on a CPU with native bf16 "
        "(OpenVINO), printed with its deviation from fp32 measured on --check-images of each set",
    )
    p.add_argument(
        "--check-images",
        type=int,
        default=1000,
        help="with --precision bf16: images per set scored in both precisions (default: %(default)s)",
    )
    p.set_defaults(func=cmd_fid, check=check_fid)

    p = sub.add_parser("kid", help=cmd_kid.__doc__, description=cmd_kid.__doc__)
    p.add_argument("paths", nargs=2, metavar="PATH", help="a folder of images or a .npy/.npz of uint8 images")
    p.add_argument("--subsets", type=int, default=100)
    p.add_argument("--subset-size", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    _add_image_set_options(p)
    p.set_defaults(func=cmd_kid)
