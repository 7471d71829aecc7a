"""Stage ``download``: take the first of ``data.sources`` that exists and verifies,
extract it safely and atomically into ``data/raw``."""

from __future__ import annotations

import json
from pathlib import Path

from cvae_pipeline import paths
from cvae_pipeline.config import load_params
from cvae_pipeline.data.archive import extract_atomically
from cvae_pipeline.data.readers import detect_layout
from cvae_pipeline.data.sources import acquire_archive
from cvae_pipeline.stage import run_stage, stage_parser


def main() -> None:
    args = stage_parser(__doc__).parse_args()
    params = load_params(args.params).data

    archive = acquire_archive(params.sources, workdir=paths.RAW_DIR.parent, timeout=params.timeout_seconds)
    try:
        print(f"verified {archive.path} ({archive.source.checksum[0]})")

        def check_and_record(tree: Path) -> None:
            layout = detect_layout(tree)
            algorithm, digest = archive.source.checksum
            record = {"uri": archive.source.uri, algorithm: digest, "layout": layout.kind}
            (tree / paths.SOURCE_RECORD.name).write_text(json.dumps(record, indent=2) + "\n")
            print(f"layout: {layout.kind} at {layout.root.relative_to(tree) or '.'}")

        extract_atomically(archive.path, paths.RAW_DIR, validate=check_and_record)
    finally:
        if archive.is_temporary:
            archive.path.unlink(missing_ok=True)
    print(f"extracted to {paths.RAW_DIR}")


if __name__ == "__main__":
    run_stage(main)
