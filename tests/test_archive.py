from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
from archives import make_archive_with_member, make_batches_archive, make_image_folder_archive

from cvae_pipeline.data.archive import MAX_ENTRIES, MAX_EXTRACTED_BYTES, extract_atomically
from cvae_pipeline.data.readers import detect_layout
from cvae_pipeline.errors import ArchiveError


def leftovers(parent: Path) -> list[str]:
    """Anything extraction left in the target's folder (temporary dirs included)."""
    return sorted(p.name for p in parent.iterdir() if not p.name.endswith(".tar.gz"))


@pytest.mark.parametrize(
    ("maker", "kind"),
    [(make_image_folder_archive, "image-folders"), (make_batches_archive, "python-batches")],
)
def test_extracts_both_layouts(tmp_path, maker, kind):
    archive = maker(tmp_path / "a.tar.gz")
    target = tmp_path / "raw"
    extract_atomically(archive, target, validate=detect_layout)
    assert detect_layout(target).kind == kind
    assert leftovers(tmp_path) == ["raw"]


def test_layout_may_sit_below_a_top_folder(tmp_path):
    archive = make_image_folder_archive(tmp_path / "a.tar.gz", 1, 1, top="cifar10/")
    extract_atomically(archive, tmp_path / "raw", validate=detect_layout)
    assert detect_layout(tmp_path / "raw").root == tmp_path / "raw" / "cifar10"


@pytest.mark.parametrize("name", ["../escape.txt", "/etc/evil.txt", "train/../../escape.txt"])
def test_path_traversal_entry_is_refused(tmp_path, name):
    member = tarfile.TarInfo(name)
    member.size = 4
    archive = make_archive_with_member(tmp_path / "evil.tar.gz", member, b"evil")
    with pytest.raises(ArchiveError, match="refused unsafe entry"):
        extract_atomically(archive, tmp_path / "out" / "raw", validate=detect_layout)
    assert not (tmp_path / "out" / "raw").exists()
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "out" / "escape.txt").exists()
    assert leftovers(tmp_path / "out") == []


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_link_entry_is_refused_even_inside_target(tmp_path, kind):
    member = tarfile.TarInfo("train/airplane/link.jpg")
    member.type = kind
    member.linkname = "train/airplane/0000.jpg"
    archive = make_archive_with_member(tmp_path / "link.tar.gz", member)
    with pytest.raises(ArchiveError, match="refused link entry"):
        extract_atomically(archive, tmp_path / "raw", validate=detect_layout)
    assert leftovers(tmp_path) == []


def test_device_entry_is_refused(tmp_path):
    member = tarfile.TarInfo("dev/null")
    member.type = tarfile.CHRTYPE
    archive = make_archive_with_member(tmp_path / "dev.tar.gz", member)
    with pytest.raises(ArchiveError, match="refused special entry"):
        extract_atomically(archive, tmp_path / "raw")
    assert leftovers(tmp_path) == []


def test_truncated_archive_leaves_nothing(tmp_path):
    full = make_image_folder_archive(tmp_path / "full.tar.gz", 5, 2).read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(full[: len(full) // 2])
    target = tmp_path / "out" / "raw"
    with pytest.raises(ArchiveError, match="truncated or corrupt"):
        extract_atomically(cut, target, validate=detect_layout)
    assert leftovers(tmp_path / "out") == []


def test_a_failed_extraction_leaves_the_previous_output_as_it_was(tmp_path):
    """The previous, complete data/raw (the one dvc.lock records) is neither deleted first nor left
    half-replaced: a failure costs nothing that was there."""
    target = tmp_path / "out" / "raw"
    (target / "train" / "old").mkdir(parents=True)
    (target / "train" / "old" / "0000.jpg").write_bytes(b"old image")
    for bad in (b"this is not an archive at all", make_image_folder_archive(tmp_path / "x.tar.gz").read_bytes()[:900]):
        archive = tmp_path / "bad.tar.gz"
        archive.write_bytes(bad)
        with pytest.raises(ArchiveError, match=str(archive)):
            extract_atomically(archive, target, validate=detect_layout)
        assert (target / "train" / "old" / "0000.jpg").read_bytes() == b"old image"
        assert leftovers(tmp_path / "out") == ["raw"]


def test_unknown_layout_is_refused_and_leaves_nothing(tmp_path):
    member = tarfile.TarInfo("readme.txt")
    member.size = 2
    archive = tmp_path / "odd.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        import io

        tar.addfile(member, io.BytesIO(b"hi"))
    with pytest.raises(ArchiveError, match="unknown dataset layout") as info:
        extract_atomically(archive, tmp_path / "out" / "raw", validate=detect_layout)
    assert str(info.value).startswith(f"{archive}: unknown dataset layout")  # the archive, not a deleted temp folder
    assert leftovers(tmp_path / "out") == []


def test_damaged_archive_whose_damage_decompresses_cleanly_is_refused(tmp_path):
    """A corrupted copy whose own sha256 a user pinned: deflate decodes the damaged bytes without error
    and tar's headers are intact, so only the gzip CRC at the end of the stream can tell."""
    import gzip
    import io

    plain = io.BytesIO()
    with tarfile.open(fileobj=plain, mode="w") as tar:
        make = make_image_folder_archive(tmp_path / "src.tar.gz", 2, 1)
        with tarfile.open(make) as source:
            for member in source.getmembers():
                tar.addfile(member, source.extractfile(member) if member.isfile() else None)
    raw = bytearray(plain.getvalue())
    first_jpeg = raw.index(b"\xff\xd8\xff")  # inside the first image's data, not a header
    raw[first_jpeg + 100] ^= 0xFF
    damaged = tmp_path / "damaged.tar.gz"
    good_crc = gzip.compress(bytes(plain.getvalue()), compresslevel=0)
    stored = bytearray(gzip.compress(bytes(raw), compresslevel=0))
    stored[-8:-4] = good_crc[-8:-4]  # the CRC of the undamaged data: what the copy was made from
    damaged.write_bytes(stored)
    with pytest.raises(ArchiveError, match="truncated or corrupt archive"):
        extract_atomically(damaged, tmp_path / "out" / "raw", validate=detect_layout)
    assert leftovers(tmp_path / "out") == []


def test_an_archive_claiming_more_than_the_cap_is_refused_before_extracting(tmp_path):
    """A header may claim any size; a 1 KB file claiming 3 GiB is refused at its header, not after
    filling the disk (the cap: MAX_EXTRACTED_BYTES, far above CIFAR-10's ~200 MB)."""
    info = tarfile.TarInfo("train/cat/0000.jpg")
    info.size = MAX_EXTRACTED_BYTES + 1
    archive = tmp_path / "claims.tar"
    archive.write_bytes(info.tobuf(tarfile.GNU_FORMAT) + b"x" * 1024)
    target = tmp_path / "raw"
    with pytest.raises(ArchiveError, match="unpacks to more than 2 GiB"):
        extract_atomically(archive, target)
    assert not target.exists() and [p.name for p in tmp_path.iterdir()] == ["claims.tar"]


def test_an_archive_of_too_many_entries_is_refused_before_anything_is_extracted(tmp_path, monkeypatch):
    """300,000 empty entries gzip to a few MB and would cost a minute and as many inodes before the layout
    check refused them: the entries are counted from the headers first (CIFAR-10 holds 60,000 files)."""
    archive = tmp_path / "many.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        for i in range(MAX_ENTRIES + 1):
            tar.addfile(tarfile.TarInfo(f"train/cat/{i}.jpg"))

    def extracts(*args, **kwargs):
        raise AssertionError("extraction started")

    monkeypatch.setattr(tarfile.TarFile, "extractall", extracts)
    with pytest.raises(ArchiveError, match=rf"more than {MAX_ENTRIES:,} entries \(nothing was extracted\)"):
        extract_atomically(archive, tmp_path / "raw", validate=detect_layout)
    assert leftovers(tmp_path) == []
