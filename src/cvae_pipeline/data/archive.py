"""Safe, atomic extraction of a tar archive.

Python's ``tarfile`` ``data`` filter already refuses entries that resolve
outside the destination; on top of it we refuse absolute names (which it would
silently make relative) and *every* link and special file, because a dataset archive has no business containing
them and a link is the classic way to write outside the target later. The
archive is extracted into a temporary sibling directory and swapped into place
only once extraction finished, its checksum verified and the layout was
recognised, so a truncated, damaged, unsafe or unknown archive never leaves a
``data/raw`` that looks valid, and never costs the one that was there.
"""

from __future__ import annotations

import lzma
import os
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path

from ..errors import DISK_FULL_ERRNOS, ArchiveError, PipelineError
from ..io import atomic_directory

#: what an archive may unpack to in all: CIFAR-10 is under 200 MB in either layout; the cap stops a
#: decompression bomb (or a header that lies about a size) before it fills the disk
MAX_EXTRACTED_BYTES = 2 * 1024**3
#: entries an archive may hold: CIFAR-10 has 60,000 images and a few folders. Counted from the headers
#: before anything is extracted, so an archive of empty entries (a few MB of gzip that unpacks to
#: hundreds of thousands of inodes) is refused without writing one
MAX_ENTRIES = 100_000


def _strict_filter(archive: Path) -> Callable[[tarfile.TarInfo, str], tarfile.TarInfo]:
    total = 0

    def check(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
        nonlocal total
        total += member.size
        if total > MAX_EXTRACTED_BYTES:
            raise ArchiveError(
                f"{archive}: refused: it unpacks to more than {MAX_EXTRACTED_BYTES // 1024**3} GiB "
                f"(at '{member.name}'); a CIFAR-10 archive holds under 200 MB"
            )
        if member.issym() or member.islnk():
            raise ArchiveError(
                f"{archive}: refused link entry '{member.name}' -> '{member.linkname}'; "
                "a dataset archive must hold only regular files and directories"
            )
        if not (member.isfile() or member.isdir()):
            raise ArchiveError(
                f"{archive}: refused special entry '{member.name}' (device, FIFO or other); "
                "a dataset archive must hold only regular files and directories"
            )
        if member.name.startswith(("/", "\\")) or os.path.isabs(member.name):
            # tarfile's data filter would silently strip the slash; a dataset has no reason for it.
            raise ArchiveError(f"{archive}: refused unsafe entry '{member.name}': absolute path")
        try:
            return tarfile.data_filter(member, dest)
        except tarfile.FilterError as exc:
            raise ArchiveError(f"{archive}: refused unsafe entry '{member.name}': {exc}") from None

    return check


def extract_tar(archive: Path, dest: Path) -> None:
    """Extract ``archive`` (tar, optionally gz/bz2/xz) into the existing directory ``dest``.

    ``tarfile`` stops reading at the end-of-archive marker, before the compressed stream's own
    check (gzip's CRC-32 and length, bz2's and xz's checksums) is reached: the rest of the stream is
    read here, so a damaged archive fails even when its damage decompresses cleanly."""
    try:
        if not tarfile.is_tarfile(archive):  # itself raises on a compressed stream cut short
            raise ArchiveError(
                f"{archive}: not a tar archive (.tar, .tar.gz, .tar.bz2, .tar.xz); "
                "point data.sources at a CIFAR-10 tarball"
            )
        with tarfile.open(archive, mode="r:*", errorlevel=2) as tar:
            check = _strict_filter(archive)
            for count, member in enumerate(tar, start=1):  # headers only: refused here, nothing is extracted
                if count > MAX_ENTRIES:
                    raise ArchiveError(
                        f"{archive}: refused: it holds more than {MAX_ENTRIES:,} entries (nothing was extracted); "
                        "a CIFAR-10 archive holds about 60,000 files"
                    )
                check(member, str(dest))  # its size, kind and name, before the next header is sought past it
            tar.extractall(dest, filter=_strict_filter(archive))
            while tar.fileobj.read(1 << 20):  # to the end: the decompressor verifies its checksum there
                pass
    except ArchiveError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, OSError, lzma.LZMAError, ValueError) as exc:
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            raise  # the disk, not the archive: atomic_directory names the output
        raise ArchiveError(
            f"{archive}: truncated or corrupt archive ({type(exc).__name__}: {exc}); "
            "re-download it or check data.sources"
        ) from None


def extract_atomically(archive: Path, target: Path, validate: Callable[[Path], object] | None = None) -> None:
    """Extract ``archive`` to ``target`` all-or-nothing.

    ``validate`` (e.g. layout detection) runs on the extracted tree before it replaces ``target``.
    If extraction or validation fails, ``target`` is left exactly as it was (an earlier, complete
    extraction stays, as DVC's lock file still describes it); the error names the archive.
    """
    with atomic_directory(Path(target)) as tmp:
        extract_tar(archive, tmp)
        if validate is not None:
            try:
                validate(tmp)
            except PipelineError as exc:
                raise ArchiveError(str(exc).replace(str(tmp), str(archive))) from None
