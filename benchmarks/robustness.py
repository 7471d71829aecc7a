"""Robustness figures: faults injected and survived, inputs fuzzed and how each ended, requests served
under load with their latencies — measured by the tests that inject them, run here at full size.

    python benchmarks/robustness.py             # 10,000 cases per fuzz target, 3 kill points per stage
    python benchmarks/robustness.py --quick     # the sizes CI runs (a few hundred cases, 1 kill per stage)

It runs pytest on the fault, fuzz, kill, serving-load and tracking-fault tests (the team stack's need
PostgreSQL: skipped, and said so, where it is missing), collects the counts the tests record
(``CVAE_ROBUSTNESS_REPORT``) and prints them with the machine they ran on. Exit status: pytest's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TESTS = [
    "tests/test_fuzz.py",
    "tests/test_faults.py",
    "tests/test_kills.py",
    "tests/test_serving.py::test_the_served_generator_answers_every_request_under_load_and_refuses_bad_ones",
    "tests/test_tracking_server.py::test_stage_fails_within_seconds_naming_an_unreachable_server",
    "tests/test_team_stack.py::test_postgres_down_fails_a_stage_in_seconds_with_one_line",
    "tests/test_team_stack.py::test_the_object_store_down_fails_the_upload_with_one_line_and_marks_the_run_failed",
    "tests/test_team_stack.py::test_the_tracking_server_killed_mid_training_fails_in_seconds_and_the_rerun_resumes_its_run",
]


def machine() -> str:
    import torch

    sys.path.insert(0, str(REPO / "src"))
    from cvae_pipeline.runtime import cpu_description

    capability = torch.backends.cpu.get_cpu_capability()
    return f"{cpu_description()}, {os.cpu_count()} cores, torch {torch.__version__} ({capability})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CI's sizes instead of the full ones")
    parser.add_argument("--kills-per-stage", type=int, help="kill points per stage (default 3; --quick 1)")
    parser.add_argument("--requests", type=int, default=1000, help="requests of the serving load (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill points")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    kills = args.kills_per_stage or (1 if args.quick else 3)
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "robustness.json"
        env = os.environ | {
            "CVAE_ROBUSTNESS_REPORT": str(report),
            "CVAE_KILLS_PER_STAGE": str(kills),
            "CVAE_KILL_SEED": str(args.seed),
            "CVAE_SERVING_REQUESTS": str(args.requests),
        }
        profile = "ci" if args.quick else "full"
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--hypothesis-profile={profile}"]
        status = subprocess.call([*command, *TESTS], cwd=REPO, env=env)
        figures = json.loads(report.read_text()) if report.is_file() else {"counts": {}, "figures": {}}
    print(f"\nrobustness figures ({'quick' if args.quick else 'full'}; pytest exit {status}) on {machine()}")
    width = max((len(area) for area in figures["counts"]), default=10)
    for area, outcomes in sorted(figures["counts"].items()):
        print(f"  {area:<{width}}  " + ", ".join(f"{n} {outcome}" for outcome, n in sorted(outcomes.items())))
    for name, values in sorted(figures["figures"].items()):
        print(f"  {name}: " + ", ".join(f"{key} {value}" for key, value in values.items()))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "quick": args.quick, **figures}, indent=2) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
