"""Acquire a verified archive from an ordered list of candidate sources.

Why hand-written rather than ``torchvision.datasets.utils.download_url``: that
helper verifies md5 only (our offline mirror is pinned by sha256), has no
timeout a user can set, and retries silently. Here each candidate is tried in
order and every failure is remembered, so that when none works the user gets
one line saying what was tried and why each failed.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ..config import DataSource
from ..errors import DataSourceError

CHUNK = 1 << 20


def file_checksum(path: str | os.PathLike, algorithm: str) -> str:
    """Hex digest of a file, streamed (archives can be hundreds of MB)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_local_path(uri: str) -> Path | None:
    """Find a local source: absolute, relative to the working directory, or to ``DVC_ROOT``.

    ``DVC_ROOT`` matters for ``dvc exp run --temp/--queue``: DVC runs the stage
    in a copy under ``.dvc/tmp/exps/`` where a path such as
    ``../shared/data/...`` no longer resolves, but sets ``DVC_ROOT`` to the
    original repository root.
    """
    path = Path(uri).expanduser()
    if path.is_absolute():
        return path if path.is_file() else None
    bases = [Path.cwd()]
    if os.environ.get("DVC_ROOT"):
        bases.append(Path(os.environ["DVC_ROOT"]))
    for base in bases:
        candidate = base / path
        if candidate.is_file():
            return candidate.resolve()
    return None


def download(url: str, dest: Path, timeout: float) -> None:
    """Stream ``url`` into ``dest`` with a progress bar; ``timeout`` bounds connect and each read."""
    request = urllib.request.Request(url, headers={"User-Agent": "cvae-pipeline"})
    with urllib.request.urlopen(request, timeout=timeout) as response, open(dest, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {Path(url).name}") as bar:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                bar.update(len(chunk))


@dataclass(frozen=True)
class AcquiredArchive:
    """A verified archive on local disk and the source it came from."""

    path: Path
    source: DataSource
    is_temporary: bool  # True when downloaded: the caller deletes it after extraction


def _verify(path: Path, source: DataSource, label: str) -> str | None:
    """None when the checksum matches, else the reason (names file, expected and actual)."""
    algorithm, expected = source.checksum
    actual = file_checksum(path, algorithm)
    if actual != expected:
        return f"{label}: {algorithm} mismatch (expected {expected}, got {actual})"
    return None


def acquire_archive(sources: list[DataSource], workdir: Path, timeout: float) -> AcquiredArchive:
    """Return the first source that exists and verifies; raise with every reason otherwise."""
    failures: list[str] = []
    for source in sources:
        if not source.is_url:
            path = resolve_local_path(source.uri)
            if path is None:
                failures.append(f"{source.uri}: not found")
                continue
            if reason := _verify(path, source, str(path)):
                failures.append(reason)
                continue
            return AcquiredArchive(path, source, is_temporary=False)

        workdir.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".download-", suffix=".part", dir=workdir)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            download(source.uri, tmp, timeout)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            tmp.unlink(missing_ok=True)
            reason = getattr(exc, "reason", exc)
            failures.append(f"{source.uri}: download failed ({reason})")
            continue
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if reason := _verify(tmp, source, source.uri):
            tmp.unlink(missing_ok=True)
            failures.append(reason)
            continue
        return AcquiredArchive(tmp, source, is_temporary=True)

    raise DataSourceError(
        "no usable data source: "
        + "; ".join(failures)
        + ". Fix: put a verified archive at one of these places, or list your own copy in "
        "params.yaml data.sources (uri + sha256 or md5)"
    )
