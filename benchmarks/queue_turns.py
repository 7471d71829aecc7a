"""A queued sweep at ``-j 1`` against ``-j 2`` on this machine: do two queue workers share the cores, or
slow each other? The sweep changes only ``sample.*``, so each experiment should run ``sample`` and
``evaluate`` alone, on the workspace's trained model and prior.

    python benchmarks/queue_turns.py                     # after `dvc repro` (make run): ~15 min on 2 cores

Every experiment also gets ``--set`` (default ``evaluate.likelihood_images=1000``: the test-set
likelihood bound on all 10,000 images is 4.5 of a default experiment's 7.5 minutes on an AVX2 CPU, and
not what a sampling sweep is about); ``--set`` with nothing after it measures the defaults.

Each call queues two guidance values per worker count (other values for each, so DVC's run cache
cannot stand in for a run), starts the queue, waits, and prints the wall time, the stages each
experiment ran and the machine. The experiments stay in ``dvc exp show`` and MLflow (named
``queue-j<N>-<guidance>``); ``dvc exp remove`` them when done.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = ("download", "prepare", "fid_reference", "train", "prior", "sample", "evaluate")


def dvc(*args: str) -> str:
    return subprocess.run(["dvc", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout


def sweep(workers: int, guidances: list[str], settings: list[str]) -> dict:
    """Queue one experiment per guidance, run the queue with ``workers`` workers; seconds and stages run."""
    names = [f"queue-j{workers}-{g}" for g in guidances]
    extra = [arg for setting in settings for arg in ("-S", setting)]
    for name, guidance in zip(names, guidances, strict=True):
        dvc("exp", "run", "--queue", "-n", name, "-S", f"sample.guidance={guidance}", *extra)
    start = time.perf_counter()
    dvc("queue", "start", "-j", str(workers))
    while any(word in dvc("queue", "status") for word in ("Queued", "Running")):
        time.sleep(2)
    seconds = time.perf_counter() - start
    status = dvc("queue", "status")
    ran = {}
    for name in names:
        log = dvc("queue", "logs", name) if name in status else ""
        ran[name] = [stage for stage in STAGES if f"Running stage '{stage}'" in log]
    failed = [line for line in status.splitlines() if "Failed" in line and any(n in line for n in names)]
    return {"workers": workers, "seconds": round(seconds, 1), "stages run": ran, "failed": failed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--set", nargs="*", default=["evaluate.likelihood_images=1000"], help="more -S for each")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    from cvae_pipeline.runtime import cpu_description

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    rows = [sweep(1, ["1.5", "2.5"], args.set), sweep(2, ["2", "4"], args.set)]
    report = {"machine": cpu_description(), "commit": commit.stdout.strip(), "settings": args.set, "rows": rows}
    print(f"{report['machine']}, commit {report['commit']}, each experiment also {args.set}")
    for row in rows:
        minutes = row["seconds"] / 60
        print(f"-j {row['workers']}: {minutes:.1f} min; stages run: {row['stages run']}; failed: {row['failed']}")
    print(f"-j 2 / -j 1 wall time: {rows[1]['seconds'] / rows[0]['seconds']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
