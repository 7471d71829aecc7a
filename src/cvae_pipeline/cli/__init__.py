"""The ``cvae`` command: tools a user runs outside ``dvc repro``.

One module per group of subcommands (:mod:`.project`: params, data-info; :mod:`.metrics`: fid, kid;
:mod:`.runs`: report, compare; :mod:`.team`: team); each ``register``s its parsers, every subcommand a
function ``cmd_<name>(args) -> int``, with a ``check(args)`` where argparse cannot say what fits.
"""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from ..errors import PipelineError
from ..stage import check_python
from . import metrics, project, runs, team

GROUPS = (project, metrics, runs, team)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cvae", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"cvae-pipeline {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check = getattr(args, "check", None)
    if check is not None and (problem := check(args)):
        parser.error(problem)
    try:
        check_python()
        return args.func(args)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
