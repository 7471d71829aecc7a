"""``cvae params`` and ``cvae data-info``: the project's params and prepared data, checked and summarised."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from ..config import DEFAULT_PARAMS_FILE, load_params
from ..paths import PREPARED_DIR


def cmd_params(args: argparse.Namespace) -> int:
    """Validate params.yaml and print it, or (--markdown) the configuration reference of docs/."""
    params = load_params(args.params)
    if args.markdown:
        from ..config_docs import render_markdown

        print(render_markdown(yaml.safe_load(Path(args.params).read_text())), end="")
        return 0
    print(yaml.safe_dump(params.model_dump(), sort_keys=False), end="")
    return 0


def cmd_data_info(args: argparse.Namespace) -> int:
    """Summarise the prepared dataset: images per split and class."""
    from ..data.prepared import PREPARED_SPLITS, load_prepared

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


def register(sub) -> None:
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
