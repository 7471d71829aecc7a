"""``cvae team up|down|env``: the team stack on loopback."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from ..errors import PipelineError


def cmd_team(args: argparse.Namespace) -> int:
    """The team stack on loopback (PostgreSQL, an S3 store, MLflow with basic auth) in a state folder:
    `up` starts it and makes its bucket this repository's DVC remote, `down` stops it, `env` prints
    the exports for the pipeline's writer."""
    from ..team import Stack

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


def register(sub) -> None:
    p = sub.add_parser("team", help=cmd_team.__doc__.splitlines()[0], description=cmd_team.__doc__)
    p.add_argument("action", choices=["up", "down", "env"])
    p.add_argument("state_dir", nargs="?", default=".team", help="the stack's state folder (default: %(default)s)")
    p.add_argument("--dvc-repo", default=".", help="repository whose DVC remote `up` sets (default: %(default)s)")
    p.add_argument("--user", default="writer", choices=["writer", "reader", "admin"], help="for `env`")
    p.set_defaults(func=cmd_team)
