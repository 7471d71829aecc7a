"""Stage ``train``: train the CVAE that ``model.*`` describes with ``train.*`` and track it as one MLflow
run; an interrupted run of the same inputs resumes from its checkpoint.

Data-parallel on several GPUs/processes/nodes: ``torchrun --nproc_per_node=N stages/train.py``
(rank 0 writes and tracks; see ``training/distributed.py``)."""

from __future__ import annotations

from pathlib import Path

from cvae_pipeline.config import load_params
from cvae_pipeline.runtime import set_threads
from cvae_pipeline.stage import run_stage, stage_parser
from cvae_pipeline.training import distributed
from cvae_pipeline.training.pipeline import train_process


def main() -> None:
    args = stage_parser(__doc__).parse_args()
    params = load_params(args.params)
    set_threads(params.train.num_threads)
    dist = distributed.from_environment()
    try:
        train_process(params, Path(args.params), dist)
    finally:
        distributed.shutdown(dist)


if __name__ == "__main__":
    run_stage(main)
