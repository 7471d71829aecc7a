"""The ``cvae`` command: tools a user runs outside ``dvc repro``.

``fid`` and ``kid`` follow pytorch-fid's CLI (``python -m pytorch_fid A B``),
the interface users already know. Every subcommand is a function
``cmd_<name>(args) -> int`` registered in :func:`build_parser`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import yaml

from . import __version__
from .config import DEFAULT_PARAMS_FILE, FEATURE_PRECISIONS, INCEPTION_ENGINES, load_params
from .errors import PipelineError
from .paths import COMPARE_DIR, PREPARED_DIR
from .stage import check_python


def cmd_params(args: argparse.Namespace) -> int:
    """Validate params.yaml and print it, or (--markdown) the configuration reference of docs/."""
    params = load_params(args.params)
    if args.markdown:
        from .config_docs import render_markdown

        print(render_markdown(yaml.safe_load(Path(args.params).read_text())), end="")
        return 0
    print(yaml.safe_dump(params.model_dump(), sort_keys=False), end="")
    return 0


def cmd_data_info(args: argparse.Namespace) -> int:
    """Summarise the prepared dataset: images per split and class."""
    from .data.prepared import PREPARED_SPLITS, load_prepared

    rows = {}
    for split in PREPARED_SPLITS:
        data = load_prepared(args.prepared_dir, split)
        counts = [int((data.labels == c).sum()) for c in range(len(data.classes))]
        rows[split] = dict(zip(data.classes, counts))
        rows[split]["total"] = len(data)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    classes = list(rows["train"])
    width = max(map(len, classes)) + 2
    print("class".ljust(width) + "".join(s.rjust(8) for s in PREPARED_SPLITS))
    for name in classes:
        print(name.ljust(width) + "".join(str(rows[s][name]).rjust(8) for s in PREPARED_SPLITS))
    return 0


def _features_of(image_set, args: argparse.Namespace, extractor_box: list):
    """Inception features of an image set (the network is loaded once, on first need)."""
    from .metrics.inception import InceptionFeatures
    from .runtime import resolve_device

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
    from .metrics.fid import Statistics, fid_against, fid_from_features, frechet_distance
    from .metrics.image_sets import load_image_set

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

    from .metrics.fid import fid_from_features
    from .metrics.image_sets import load_image_set
    from .metrics.inception import InceptionFeatures
    from .runtime import resolve_device

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
    from .errors import PipelineError
    from .metrics.image_sets import load_image_set
    from .metrics.kid import kid

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


def _experiment_name(args: argparse.Namespace) -> str:
    if args.experiment:
        return args.experiment
    return load_params(args.params).mlflow.experiment if Path(args.params).is_file() else "cvae-cifar10"


def cmd_report(args: argparse.Namespace) -> int:
    """Table of an experiment's MLflow runs: the params that differ, FID, KID, class consistency,
    likelihood, train time; sorted by FID, printed, and written as Markdown and CSV."""
    import pandas as pd

    from .comparison import runs_frame, runs_table, write_report

    table = runs_table(runs_frame(_experiment_name(args)))
    with pd.option_context("display.max_columns", None, "display.width", 200, "display.precision", 4):
        print(table.to_string(index=False))
    markdown, csv = write_report(table, args.out_dir)
    print(f"wrote {markdown} and {csv}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """One PNG with the final sample grids of two (or more) runs side by side."""
    from .comparison import side_by_side

    out = side_by_side(_experiment_name(args), args.runs, args.out)
    print(f"wrote {out}")
    return 0


def cmd_team(args: argparse.Namespace) -> int:
    """The team stack on loopback (PostgreSQL, an S3 store, MLflow with basic auth) in a state folder:
    `up` starts it and makes its bucket this repository's DVC remote, `down` stops it, `env` prints
    the exports for the pipeline's writer."""
    from .team import Stack

    stack = Stack(args.state_dir)
    if args.action == "down":
        if not stack.state:
            print(f"no team stack in {stack.directory}")
            return 0
        stack.down()
        print(f"team stack in {stack.directory} stopped (its data stays; `up` restarts it)")
        return 0
    if args.action == "up":
        stack.up()
        if (Path(args.dvc_repo) / ".dvc").is_dir():
            url = stack.configure_dvc_remote(args.dvc_repo)
            print(f"DVC remote '{url}' is the default remote of {Path(args.dvc_repo).resolve()} (.dvc/config.local)")
        print(stack.describe())
        return 0
    if not stack.running():
        raise PipelineError(f"no team stack runs in {stack.directory}; start it with `make team-up`")
    print("\n".join(f"export {k}={shlex.quote(v)}" for k, v in stack.exports(args.user).items()))
    return 0


def _add_experiment_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--experiment", help="MLflow experiment (default: mlflow.experiment of --params)")
    p.add_argument("--params", default=DEFAULT_PARAMS_FILE)


def _add_image_set_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--batch-size", type=int, default=50, help="Inception batch size (default: %(default)s)")
    p.add_argument(
        "--engine",
        default="auto",
        choices=INCEPTION_ENGINES,
        help="what runs the Inception network, in fp32 (default: %(default)s = OpenVINO on the CPU)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cvae", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"cvae-pipeline {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("params", help=cmd_params.__doc__)
    p.add_argument("--params", default=DEFAULT_PARAMS_FILE)
    p.add_argument(
        "--markdown", action="store_true", help="print docs/configuration.md: every knob, its value, meaning"
    )
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("data-info", help=cmd_data_info.__doc__)
    p.add_argument("prepared_dir", nargs="?", default=str(PREPARED_DIR))
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_data_info)

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
    p.set_defaults(func=cmd_fid)

    p = sub.add_parser("kid", help=cmd_kid.__doc__, description=cmd_kid.__doc__)
    p.add_argument("paths", nargs=2, metavar="PATH", help="a folder of images or a .npy/.npz of uint8 images")
    p.add_argument("--subsets", type=int, default=100)
    p.add_argument("--subset-size", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    _add_image_set_options(p)
    p.set_defaults(func=cmd_kid)

    p = sub.add_parser("report", help=cmd_report.__doc__.splitlines()[0], description=cmd_report.__doc__)
    _add_experiment_options(p)
    p.add_argument("--out-dir", type=Path, default=COMPARE_DIR, help="default: %(default)s")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("compare", help=cmd_compare.__doc__, description=cmd_compare.__doc__)
    p.add_argument("runs", nargs="+", metavar="RUN", help="run id, unique id prefix, or run name (DVC experiment)")
    _add_experiment_options(p)
    p.add_argument("--out", type=Path, default=COMPARE_DIR / "grids.png", help="default: %(default)s")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("team", help=cmd_team.__doc__.splitlines()[0], description=cmd_team.__doc__)
    p.add_argument("action", choices=["up", "down", "env"])
    p.add_argument("state_dir", nargs="?", default=".team", help="the stack's state folder (default: %(default)s)")
    p.add_argument("--dvc-repo", default=".", help="repository whose DVC remote `up` sets (default: %(default)s)")
    p.add_argument("--user", default="writer", choices=["writer", "reader", "admin"], help="for `env`")
    p.set_defaults(func=cmd_team)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "fid" and (len(args.paths) > 2 or (len(args.paths) == 1 and not args.save_stats)):
        parser.error("fid takes PATH_A PATH_B, or one PATH with --save-stats OUT.npz")
    if args.command == "fid" and args.precision == "bf16" and (len(args.paths) != 2 or args.check_images < 2):
        parser.error("fid --precision bf16 takes PATH_A PATH_B and --check-images of at least 2")
    if args.command == "compare" and len(args.runs) < 2:
        parser.error("compare takes at least two runs: RUN_A RUN_B")
    try:
        check_python()
        return args.func(args)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
