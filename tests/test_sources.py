from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

import pytest
from archives import make_image_folder_archive, md5, sha256
from conftest import free_port

from cvae_pipeline.config import DataSource
from cvae_pipeline.data.sources import acquire_archive, resolve_local_path
from cvae_pipeline.errors import DataSourceError


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    return make_image_folder_archive(tmp_path_factory.mktemp("src") / "tiny.tar.gz", 2, 1)


@pytest.fixture
def http_server(archive: Path):
    """Serve the archive's folder on a free loopback port (a real download, no mock)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(archive.parent))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_local_source_that_verifies_is_used_in_place(archive, tmp_path):
    got = acquire_archive([DataSource(uri=str(archive), sha256=sha256(archive))], tmp_path, 5)
    assert got.path == archive and not got.is_temporary


def test_checksum_mismatch_names_file_expected_and_actual(archive, tmp_path):
    wrong = "0" * 64
    with pytest.raises(DataSourceError) as info:
        acquire_archive([DataSource(uri=str(archive), sha256=wrong)], tmp_path, 5)
    msg = str(info.value)
    assert str(archive) in msg and f"expected {wrong}" in msg and f"got {sha256(archive)}" in msg
    assert "\n" not in msg


def test_falls_back_to_next_source_in_order(archive, tmp_path):
    sources = [
        DataSource(uri=str(tmp_path / "absent.tar.gz"), md5="0" * 32),
        DataSource(uri=str(archive), md5="f" * 32),
        DataSource(uri=str(archive), md5=md5(archive)),
    ]
    got = acquire_archive(sources, tmp_path, 5)
    assert got.source is sources[2]


def test_download_over_http_verifies_and_is_temporary(archive, http_server, tmp_path):
    source = DataSource(uri=f"{http_server}/{archive.name}", md5=md5(archive))
    got = acquire_archive([source], tmp_path / "work", 5)
    assert got.is_temporary and got.path.read_bytes() == archive.read_bytes()


def test_download_with_wrong_checksum_leaves_no_partial_file(archive, http_server, tmp_path):
    work = tmp_path / "work"
    source = DataSource(uri=f"{http_server}/{archive.name}", sha256="1" * 64)
    with pytest.raises(DataSourceError, match="sha256 mismatch"):
        acquire_archive([source], work, 5)
    assert list(work.iterdir()) == []


def test_unreachable_url_and_missing_file_are_both_reported(tmp_path):
    port = free_port()
    sources = [
        DataSource(uri=str(tmp_path / "nowhere.tar.gz"), md5="0" * 32),
        DataSource(uri=f"http://127.0.0.1:{port}/cifar.tar.gz", md5="0" * 32),
    ]
    with pytest.raises(DataSourceError) as info:
        acquire_archive(sources, tmp_path / "work", 2)
    msg = str(info.value)
    assert "nowhere.tar.gz: not found" in msg and "download failed" in msg and "data.sources" in msg


def test_relative_path_resolves_against_dvc_root(archive, tmp_path, monkeypatch):
    """`dvc exp run --temp` runs in a copy of the repo; DVC_ROOT points at the original."""
    root = archive.parent
    monkeypatch.chdir(tmp_path)
    assert resolve_local_path(archive.name) is None
    monkeypatch.setenv("DVC_ROOT", str(root))
    assert resolve_local_path(archive.name) == archive.resolve()
