"""Files that hold a stack's secrets (passwords, keys, auth configs): its owner's alone from the start."""

from __future__ import annotations

from pathlib import Path


def write_secret(path: Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600, set before the secret goes in (also on a file that
    exists with a wider mode), so it is never readable by others, not even for a moment."""
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
