"""Stage ``prepare``: decode ``data/raw`` into uint8 arrays in ``data/prepared``
(train / val / test), validate them and write dataset facts for ``dvc metrics show``."""

from __future__ import annotations

import json

from cvae_pipeline import paths
from cvae_pipeline.config import load_params
from cvae_pipeline.data.prepared import dataset_facts, make_splits, save_prepared
from cvae_pipeline.data.readers import read_dataset
from cvae_pipeline.io import write_json_atomic
from cvae_pipeline.stage import run_stage, stage_parser


def main() -> None:
    args = stage_parser(__doc__).parse_args()
    params = load_params(args.params).prepare

    dataset = read_dataset(paths.RAW_DIR)
    splits = make_splits(dataset, params)
    facts = dataset_facts(splits, dataset.classes)
    source_file = paths.SOURCE_RECORD
    manifest = {
        "layout": dataset.layout,
        "source": json.loads(source_file.read_text()) if source_file.is_file() else None,
        "classes": dataset.classes,
        "params": params.model_dump(),
        "facts": facts,
    }
    save_prepared(paths.PREPARED_DIR, splits, dataset.classes, manifest)
    write_json_atomic(paths.DATA_FACTS, facts)
    counts = ", ".join(f"{name} {facts[name]['images']}" for name in splits)
    print(f"prepared {counts} images of {len(dataset.classes)} classes in {paths.PREPARED_DIR}")


if __name__ == "__main__":
    run_stage(main)
