"""Compute precision: bf16 autocast where the hardware computes bf16 natively and a probe measures it
faster, fp32 everywhere else.

Only the matmuls and convolutions drop to bf16 (``torch.autocast``); the weights, the optimiser's
state and the gradients stay fp32, and the models cast their networks' outputs back to fp32 before
the likelihood, the KL and every reduction of the loss. So a bf16 run checkpoints, resumes and
saves exactly like an fp32 one, and its losses are summed at full precision.

``auto`` never costs a CPU without native bf16 anything: there it is fp32 without a probe. Where
bf16 is native (AVX512-BF16 or AMX on x86, bf16-capable CUDA GPUs) a few timed steps of the real
work under each candidate decide, because the fastest recipe is not obvious: on one AMX machine
bf16 trained the default model 2.1x faster than fp32, but bf16 in channels-last memory only 1.3x.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

#: auto takes bf16 only when the probe measures it at least this much faster: below it, timing noise
#: between two short probes could pick either, and fp32 is the exact choice
MIN_GAIN = 1.1
#: untimed steps before the timed ones (oneDNN picks and caches its kernels on the first calls)
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


def choose(setting: str, native: bool, timings: dict[Precision, float] | None) -> Choice:
    """The decision, apart from the measuring: ``timings`` are seconds per step of each candidate
    (fp32 among them) on hardware with native bf16; None where none were measured."""
    if setting == "fp32":
        return Choice(FP32, "set")
    if setting == "bf16":
        if not native:
            return Choice(BF16, "set; this device has no native bf16, so it is emulated and slower than fp32")
        bf16 = {p: t for p, t in (timings or {}).items() if p.dtype == "bf16"}
        best = min(bf16, key=bf16.get) if bf16 else BF16
        return Choice(best, "set" + (f"; {_rates(bf16)}" if len(bf16) > 1 else ""))
    if setting != "auto":
        raise ValueError(f"precision {setting!r}: expected auto | fp32 | bf16")
    if not native:
        return Choice(FP32, "auto: no native bf16 on this device")
    if not timings or FP32 not in timings:
        raise ValueError("auto on native bf16 needs the probe's fp32 timing")
    best = min(timings, key=timings.get)
    gain = timings[FP32] / timings[best]
    if best == FP32 or gain < MIN_GAIN:
        return Choice(FP32, f"auto: bf16 not {MIN_GAIN:g}x faster in the probe ({_rates(timings)})")
    return Choice(best, f"auto: {gain:.2f}x fp32 in the probe ({_rates(timings)})")


def _rates(timings: dict[Precision, float]) -> str:
    return ", ".join(f"{p.name} {1 / t:.2f} steps/s" for p, t in timings.items())


def resolve(
    setting: str,
    device: torch.device,
    probe: Callable[[Precision], float] | None,
    candidates: Sequence[Precision] = (FP32, BF16, BF16_CHANNELS_LAST),
) -> Choice:
    """``setting`` (auto | fp32 | bf16) on ``device``: ``probe(precision)`` -> seconds per step of the
    real work, called only where bf16 is native and there is something to decide. The probe runs
    under ``torch.random.fork_rng``, so it never changes what the work itself draws."""
    native = native_bf16(device)
    wanted = {"auto": candidates, "bf16": [c for c in candidates if c.dtype == "bf16"]}.get(setting, [])
    timings = None
    if native and probe is not None and len(wanted) > (setting == "bf16"):
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            timings = {candidate: probe(candidate) for candidate in wanted}
    return choose(setting, native, timings)


def resume_or_resolve(
    recorded: str | None,
    setting: str,
    device: torch.device,
    probe: Callable[[Precision], float] | None,
    candidates: Sequence[Precision] = (FP32, BF16, BF16_CHANNELS_LAST),
) -> Choice:
    """A resumed run keeps the precision its checkpoint ``recorded``: a new probe might decide otherwise,
    and the rest of the run would then differ from an uninterrupted one. Otherwise :func:`resolve`."""
    if recorded:
        return Choice(Precision.parse(recorded), "the checkpoint's, which this run resumes")
    return resolve(setting, device, probe, candidates)
