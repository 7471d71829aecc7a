"""The download and prepare stage scripts, run as DVC runs them: subprocesses in a workspace."""

from __future__ import annotations

import json

import pytest
import yaml
from archives import make_batches_archive, make_image_folder_archive, sha256
from conftest import REPO, SHARED_ARCHIVE, run_stage, write_params


def test_tampered_archive_fails_with_one_line_and_leaves_no_raw(workspace, tmp_path):
    archive = make_image_folder_archive(tmp_path / "cifar.tar.gz", 1, 1)
    expected = sha256(archive)
    with open(archive, "ab") as f:
        f.write(b"tampered")
    write_params(workspace, [{"uri": str(archive), "sha256": expected}])
    result = run_stage("download", workspace)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(archive) in lines[0] and f"expected {expected}" in lines[0] and f"got {sha256(archive)}" in lines[0]
    assert not (workspace / "data" / "raw").exists()
    assert not (workspace / "data").exists() or list((workspace / "data").iterdir()) == []


def test_bad_params_stop_the_stage_before_any_work(workspace, tmp_path):
    archive = make_image_folder_archive(tmp_path / "cifar.tar.gz", 1, 1)
    write_params(workspace, [{"uri": str(archive), "sha256": sha256(archive)}], val_fraction=2.0)
    result = run_stage("download", workspace)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: params.yaml: prepare.val_fraction = 2.0 is invalid: Input should be less than or equal to 0.5"
    )
    assert not (workspace / "data").exists()


def test_download_and_prepare_official_layout_with_subsets(workspace, tmp_path):
    archive = make_batches_archive(tmp_path / "cifar-10-python.tar.gz", 12, 4)
    write_params(
        workspace,
        [{"uri": str(archive), "sha256": sha256(archive)}],
        val_fraction=0.25,
        train_subset=50,
        test_subset=20,
    )
    for stage in ("download", "prepare"):
        result = run_stage(stage, workspace)
        assert result.returncode == 0, result.stderr
    facts = json.loads((workspace / "reports" / "data.json").read_text())
    assert facts["train"]["per_class"]["cat"] == 5 and facts["train"]["images"] == 50
    assert facts["val"]["images"] == 30 and facts["test"]["per_class"]["truck"] == 2
    source = json.loads((workspace / "data" / "raw" / ".source.json").read_text())
    assert source["layout"] == "python-batches" and source["sha256"] == sha256(archive)


def test_prepare_without_raw_data_says_what_to_run(workspace, tmp_path):
    archive = make_image_folder_archive(tmp_path / "cifar.tar.gz", 1, 1)
    write_params(workspace, [{"uri": str(archive), "sha256": sha256(archive)}])
    (workspace / "data" / "raw").mkdir(parents=True)
    result = run_stage("prepare", workspace)
    assert result.returncode == 1 and "unknown dataset layout" in result.stderr
    assert not (workspace / "data" / "prepared").exists()


@pytest.mark.slow
@pytest.mark.integration
def test_real_cifar10_archive(workspace):
    """The offline mirror end to end: 45,000 + 5,000 train/val and 10,000 test images."""
    if not SHARED_ARCHIVE.is_file():
        pytest.skip(f"real archive absent: {SHARED_ARCHIVE} (CI provides ../shared beside the clone)")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["sources"][0]["uri"] = str(SHARED_ARCHIVE)
    (workspace / "params.yaml").write_text(yaml.safe_dump(params))
    for stage in ("download", "prepare"):
        result = run_stage(stage, workspace)
        assert result.returncode == 0, result.stderr
    facts = json.loads((workspace / "reports" / "data.json").read_text())
    assert facts["train"]["images"] == 45000 and facts["val"]["images"] == 5000
    assert facts["test"]["images"] == 10000
    assert set(facts["train"]["per_class"].values()) == {4500}
    assert set(facts["test"]["per_class"].values()) == {1000}
    assert facts["train"]["per_class"].keys() == {
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    }
