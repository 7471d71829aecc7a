"""Where the default trainer's step spends its time, in fp32 and in bf16 autocast — side by side in one run.

    python benchmarks/trainer_profile.py [--steps 8] [--top 12]

Needs ``data/prepared`` (``dvc repro prepare``). ``benchmarks/speed.py`` says *how much* bf16 gains on this
CPU; this says *where* it does and does not: ``torch.profiler``'s self CPU time of every operator over
``--steps`` training steps (batch ``train.batch_size``, the default model, after a warm-up epoch), summed
into groups (convolutions forward and backward, matmuls, normalisation, the optimiser and EMA, dtype casts,
the rest), each group's share of the step and its bf16 speed-up. Then the ``--top`` operators of each run.
Run it alone: a concurrent heavy process distorts every share.
"""

from __future__ import annotations

import argparse
import re
import time

import torch
from speed import CPU, PARAMS, warmed_trainer  # benchmarks/speed.py (puts src/ on the path): the trainer it times

from cvae_pipeline.precision import BF16, FP32, Precision, native_bf16
from cvae_pipeline.runtime import cpu_description

#: operator name (aten::...) -> group; the first pattern that matches wins
GROUPS = (
    ("convolution backward", r"convolution_backward"),
    ("convolution forward", r"conv|convolution"),
    ("matmul (linear layers)", r"addmm|\bmm\b|bmm|linear|matmul"),
    ("normalisation", r"norm"),
    ("optimiser + EMA", r"adam|_foreach|lerp"),
    ("dtype casts and copies", r"_to_copy|\bto\b|copy_|clone|contiguous"),
)


def group_of(op: str) -> str:
    name = op.removeprefix("aten::")
    for group, pattern in GROUPS:
        if re.search(pattern, name):
            return group
    return "everything else (elementwise, reductions, loss, data)"


def profile(precision: Precision, steps: int) -> tuple[float, dict[str, float], list[tuple[str, float]]]:
    """(seconds per step, {group: self seconds per step}, [(op, self seconds per step)] by time)."""
    trainer, _ = warmed_trainer(precision, steps)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        started = time.perf_counter()
        trainer.train_epoch()
        wall = time.perf_counter() - started
    ops = [(e.key, e.self_cpu_time_total / 1e6 / steps) for e in prof.key_averages() if e.self_cpu_time_total > 0]
    ops.sort(key=lambda item: -item[1])
    groups: dict[str, float] = {}
    for op, seconds in ops:
        group = group_of(op)
        groups[group] = groups.get(group, 0.0) + seconds
    return wall / steps, groups, ops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    print(f"{cpu_description()}; torch {torch.__version__}; native bf16: {native_bf16(CPU)}")
    if not native_bf16(CPU):
        print("no native bf16 on this CPU: bf16 would be emulated; profiling fp32 only")
    runs = {"fp32": profile(FP32, args.steps)}
    if native_bf16(CPU):
        runs["bf16"] = profile(BF16, args.steps)
    fp32_step = runs["fp32"][0]
    print(
        f"\nper training step (batch {PARAMS.train.batch_size}), self CPU time by group, {args.steps} steps profiled:"
    )
    header = (
        f"  {'group':<52}" + "".join(f"{name:>20}" for name in runs) + ("  bf16 speed-up" if "bf16" in runs else "")
    )
    print(header)
    names = sorted({g for _, groups, _ in runs.values() for g in groups}, key=lambda g: -runs["fp32"][1].get(g, 0))
    for group in names:
        cells = ""
        for step, groups, _ in runs.values():
            seconds = groups.get(group, 0.0)
            cells += f"{seconds * 1e3:>9.1f} ms {seconds / step:>6.1%}"
        ratio = ""
        if "bf16" in runs and runs["bf16"][1].get(group):
            ratio = f"  {runs['fp32'][1].get(group, 0.0) / runs['bf16'][1][group]:>10.2f}x"
        print(f"  {group:<52}{cells}{ratio}")
    walls = "".join(f"{step * 1e3:>9.1f} ms {'':>7}" for step, _, _ in runs.values())
    speedup = f"  {fp32_step / runs['bf16'][0]:>10.2f}x" if "bf16" in runs else ""
    print(f"  {'wall time per step (profiler on)':<52}{walls}{speedup}")
    for name, (_, _, ops) in runs.items():
        print(f"\n{name}: the {args.top} operators with the most self CPU time per step")
        for op, seconds in ops[: args.top]:
            print(f"  {op:<44}{seconds * 1e3:>9.1f} ms  {group_of(op)}")


if __name__ == "__main__":
    main()
