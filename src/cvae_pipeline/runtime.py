"""Device and thread selection: CPU everywhere, CUDA when asked for or present."""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import ConfigError


def resolve_device(name: str, key: str = "device") -> torch.device:
    """``auto`` -> cuda when available else cpu; ``cuda`` without a GPU is a clear error naming
    ``key``, the setting that asked for it (``train.device``, ``evaluate.device``, ``--device``)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key} = 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


def set_threads(num_threads: int | None) -> None:
    if num_threads is not None:
        torch.set_num_threads(num_threads)


def cpu_description() -> str:
    """The CPU model and what torch makes of it (``AMD EPYC 7B13, torch capability AVX2, 2 threads``):
    figures measured on these machines differ by CPU, so every run and benchmark says which it ran on."""
    import platform

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    capability = torch.backends.cpu.get_cpu_capability()
    return f"{model}, torch capability {capability}, {torch.get_num_threads()} threads"
