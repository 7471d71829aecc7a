from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
from archives import make_archive_with_member, make_batches_archive, make_image_folder_archive

from cvae_pipeline.data.archive import extract_atomically
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


def test_stale_target_does_not_survive_a_failed_extraction(tmp_path):
    target = tmp_path / "out" / "raw"
    (target / "train" / "old").mkdir(parents=True)
    not_tar = tmp_path / "notes.tar.gz"
    not_tar.write_bytes(b"this is not an archive at all")
    with pytest.raises(ArchiveError, match="not a tar archive"):
        extract_atomically(not_tar, target)
    assert leftovers(tmp_path / "out") == []


def test_unknown_layout_is_refused_and_leaves_nothing(tmp_path):
    member = tarfile.TarInfo("readme.txt")
    member.size = 2
    archive = tmp_path / "odd.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        import io

        tar.addfile(member, io.BytesIO(b"hi"))
    with pytest.raises(ArchiveError, match="unknown dataset layout"):
        extract_atomically(archive, tmp_path / "out" / "raw", validate=detect_layout)
    assert leftovers(tmp_path / "out") == []
