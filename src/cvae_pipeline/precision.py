"""Compute precision: bf16 autocast where the hardware computes bf16 natively, fp32 everywhere else.

Only the matmuls and convolutions drop to bf16 (``torch.autocast``); the weights, the optimiser's
state and the gradients stay fp32, and the models cast their networks' outputs back to fp32 before
the likelihood, the KL and every reduction of the loss. So a bf16 run checkpoints, resumes and
saves exactly like an fp32 one, and its losses are summed at full precision.

``auto`` is a function of the machine alone: bf16 where it is native (AVX512-BF16 or AMX on x86,
bf16-capable CUDA GPUs), fp32 elsewhere. Never a timing probe: a probe could choose differently
from one run to the next on the same machine, and the same params would then give different weights
where neither ``dvc.lock`` nor DVC's run cache can see why. Plain bf16, not bf16 in channels-last
memory: on the machines measured (docs/benchmarks.md) plain bf16 was the faster of the two.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

#: untimed steps before the timed ones of a benchmark (oneDNN picks and caches its kernels on the first calls)
PROBE_WARMUP, PROBE_REPEATS = 2, 3


@dataclass(frozen=True)
class Precision:
    """How a network computes: ``dtype`` fp32 | bf16 (autocast), optionally in channels-last memory."""

    dtype: str = "fp32"
    channels_last: bool = False

    @property
    def name(self) -> str:
        return self.dtype + (", channels-last" if self.channels_last else "")

    def autocast(self, device: torch.device):
        """The context the forward pass runs in (a no-op for fp32)."""
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.dtype == "bf16")

    def module(self, module: torch.nn.Module) -> torch.nn.Module:
        return module.to(memory_format=torch.channels_last) if self.channels_last else module

    def batch(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last and images.dim() == 4:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    @classmethod
    def parse(cls, name: str) -> Precision:
        """The inverse of ``name`` (a checkpoint or a logged generator records the choice by name)."""
        dtype, _, layout = name.partition(", ")
        if dtype not in ("fp32", "bf16") or layout not in ("", "channels-last"):
            raise ValueError(f"not a precision: {name!r}")
        return cls(dtype, layout == "channels-last")


FP32 = Precision("fp32")
BF16 = Precision("bf16")
BF16_CHANNELS_LAST = Precision("bf16", channels_last=True)


@dataclass(frozen=True)
class Choice:
    """What ``resolve`` chose and why: the why goes into the stage's log line and its MLflow run."""

    precision: Precision
    why: str


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware.

    On x86 CPUs: AVX512-BF16 or AMX tiles, and torch's kernels dispatched at AVX-512 (a capability
    forced lower with ``ATEN_CPU_CAPABILITY=avx2`` turns it off, which is how to test or refuse it).
    ``torch.cpu._is_*_supported`` are private but are what torch itself asks; a torch without them
    answers False, i.e. fp32.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu" or not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        return False
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def seconds_per_step(step: Callable[[], None], warmup: int = PROBE_WARMUP, repeats: int = PROBE_REPEATS) -> float:
    """The fastest of ``repeats`` timed calls of ``step`` after ``warmup`` untimed ones (the minimum is
    the least disturbed by other processes)."""
    for _ in range(warmup):
        step()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - start)
    return best


def resolve(setting: str, device: torch.device) -> Choice:
    """``setting`` (auto | fp32 | bf16) on ``device``: the same answer every time on the same machine."""
    native = native_bf16(device)
    if setting == "fp32":
        return Choice(FP32, "set")
    if setting == "bf16":
        return Choice(BF16, "set" if native else "set; this device has no native bf16, so it is emulated and slower")
    if setting != "auto":
        raise ValueError(f"precision {setting!r}: expected auto | fp32 | bf16")
    return (
        Choice(BF16, "auto: native bf16 on this device")
        if native
        else Choice(FP32, "auto: no native bf16 on this device")
    )


def resume_or_resolve(recorded: str | None, setting: str, device: torch.device) -> Choice:
    """A resumed run keeps the precision its checkpoint ``recorded`` (a checkpoint carried to another
    machine must not change precision half-way); otherwise :func:`resolve`."""
    if recorded:
        return Choice(Precision.parse(recorded), "the checkpoint's, which this run resumes")
    return resolve(setting, device)
