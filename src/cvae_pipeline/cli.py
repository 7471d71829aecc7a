"""The ``cvae`` command: tools a user runs outside ``dvc repro``.

Later issues add ``fid``, ``kid``, ``report`` and ``compare`` here; every
subcommand is a function ``cmd_<name>(args) -> int`` registered in
:func:`build_parser`.
"""

from __future__ import annotations

import argparse
import json
import sys

import yaml

from . import __version__
from .config import DEFAULT_PARAMS_FILE, load_params
from .errors import PipelineError


def cmd_params(args: argparse.Namespace) -> int:
    """Validate params.yaml and print it with every default filled in."""
    params = load_params(args.params)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cvae", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"cvae-pipeline {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("params", help=cmd_params.__doc__)
    p.add_argument("--params", default=DEFAULT_PARAMS_FILE)
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("data-info", help=cmd_data_info.__doc__)
    p.add_argument("prepared_dir", nargs="?", default="data/prepared")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_data_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
