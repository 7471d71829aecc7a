"""Device and thread selection: CPU everywhere, CUDA when asked for or present."""

from __future__ import annotations

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
