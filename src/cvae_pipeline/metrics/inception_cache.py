"""The frozen FID network, kept on disk between processes.

Building it (reading the TorchScript file's weights into pytorch-fid's architecture, which imports
torchvision; folding the batch norms; tracing and freezing) costs seconds in every ``fid_reference``,
``evaluate`` and ``cvae fid``, while loading the frozen result takes a tenth of a second and gives the
same features bit for bit (tested). The file is derived data: its name holds the weights' sha1, the
torch version and the device type, a sha256 beside it is checked on every load, and a missing, stale or
damaged file is rebuilt. Failing to write it (a read-only home, a full disk) costs only the rebuild.

Location: ``$CVAE_CACHE_DIR``, else ``$XDG_CACHE_HOME/cvae-pipeline``, else ``~/.cache/cvae-pipeline``.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from pathlib import Path

import torch

from ..errors import WriteError
from ..io import atomic_file

CACHE_ENV = "CVAE_CACHE_DIR"
#: bump when what the file holds changes (e.g. another optimisation of the network)
FORMAT = 1


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cvae-pipeline"


def cache_path(weights_sha1: str, device: torch.device) -> Path:
    version = torch.__version__.replace("+", "-")
    return cache_dir() / f"fid-inception-{weights_sha1[:12]}-torch{version}-{device.type}-v{FORMAT}.pt"


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def read_verified(path: Path) -> bytes | None:
    """The file's bytes when its sha256 beside it matches, else None (missing, stale or damaged)."""
    try:
        data = path.read_bytes()
        expected = _digest_path(path).read_text().strip()
    except OSError:
        return None
    return data if hashlib.sha256(data).hexdigest() == expected else None


def write_verified(files: dict[Path, bytes]) -> None:
    """Write each file and its checksum by atomic renames; a failure is one printed note (the cache is
    derived data: without it the network is only rebuilt on each run)."""
    try:
        for path, data in files.items():
            for target, content in ((path, data), (_digest_path(path), hashlib.sha256(data).hexdigest().encode())):
                with atomic_file(target) as tmp:
                    tmp.write_bytes(content)
    except (OSError, WriteError) as err:
        folder = next(iter(files)).parent
        print(
            f"note: could not cache the FID network in {folder} ({getattr(err, 'strerror', None) or err}); "
            f"it is rebuilt on each run (set {CACHE_ENV} to a writable folder)"
        )


def load(path: Path, device: torch.device) -> torch.jit.ScriptModule | None:
    """The cached network, or None when the file is missing or does not match its checksum."""
    if (data := read_verified(path)) is None:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
            return torch.jit.load(io.BytesIO(data), map_location=device).eval()
    except (RuntimeError, ValueError):
        return None


def store(network: torch.jit.ScriptModule, path: Path) -> None:
    """Write ``network`` and its checksum (``write_verified``)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(network, buffer)
    write_verified({path: buffer.getvalue()})
