"""``cvae report`` and ``cvae compare``: an experiment's MLflow runs as a table, and their grids side by side."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import DEFAULT_PARAMS_FILE, load_params
from ..paths import COMPARE_DIR


def _experiment_name(args: argparse.Namespace) -> str:
    if args.experiment:
        return args.experiment
    return load_params(args.params).mlflow.experiment if Path(args.params).is_file() else "cvae-cifar10"


def cmd_report(args: argparse.Namespace) -> int:
    """Table of an experiment's MLflow runs: the params that differ, FID, KID, class consistency,
    likelihood, train time; sorted by FID, printed, and written as Markdown and CSV."""
    import pandas as pd

    from ..comparison import runs_frame, runs_table, write_report

    table = runs_table(runs_frame(_experiment_name(args)))
    with pd.option_context("display.max_columns", None, "display.width", 200, "display.precision", 4):
        print(table.to_string(index=False))
    markdown, csv = write_report(table, args.out_dir)
    print(f"wrote {markdown} and {csv}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """One PNG with the final sample grids of two (or more) runs side by side."""
    from ..comparison import side_by_side

    out = side_by_side(_experiment_name(args), args.runs, args.out)
    print(f"wrote {out}")
    return 0


def _add_experiment_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--experiment", help="MLflow experiment (default: mlflow.experiment of --params)")
    p.add_argument("--params", default=DEFAULT_PARAMS_FILE)


def check_compare(args: argparse.Namespace) -> str | None:
    return "compare takes at least two runs: RUN_A RUN_B" if len(args.runs) < 2 else None


def register(sub) -> None:
    p = sub.add_parser("report", help=cmd_report.__doc__.splitlines()[0], description=cmd_report.__doc__)
    _add_experiment_options(p)
    p.add_argument("--out-dir", type=Path, default=COMPARE_DIR, help="default: %(default)s")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("compare", help=cmd_compare.__doc__, description=cmd_compare.__doc__)
    p.add_argument("runs", nargs="+", metavar="RUN", help="run id, unique id prefix, or run name (DVC experiment)")
    _add_experiment_options(p)
    p.add_argument("--out", type=Path, default=COMPARE_DIR / "grids.png", help="default: %(default)s")
    p.set_defaults(func=cmd_compare, check=check_compare)
