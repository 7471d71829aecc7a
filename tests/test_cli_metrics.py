"""``cvae fid`` / ``cvae kid`` on folders, arrays and statistics, and against pytorch-fid itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from archives import class_images
from conftest import clean_env
from PIL import Image

from cvae_pipeline.cli import main

CVAE = Path(sys.executable).parent / "cvae"


def image_folder(root: Path, labels: range, per_class: int, seed: int, nested: bool = False) -> Path:
    for label in labels:
        folder = root / f"class{label}" if nested else root
        folder.mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(class_images(label, per_class, seed)):
            Image.fromarray(img).save(folder / f"{label}_{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("sets")
    a = image_folder(root / "a", range(0, 5), 6, seed=0)
    b = image_folder(root / "b", range(3, 8), 6, seed=1)
    return a, b


def last_value(output: str, label: str) -> float:
    line = output.strip().splitlines()[-1]
    assert line.startswith(label), output
    return float(line.split()[1])


@pytest.mark.slow
def test_cli_fid_equals_pytorch_fid_on_two_folders(folders, tmp_path):
    """The acceptance check: same folders, same number as ``python -m pytorch_fid A B``."""
    from pytorch_fid_weights import install_pytorch_fid_weights  # tests/: the reference's weights, offline

    a, b = folders
    torch_home = tmp_path / "torch_home"
    install_pytorch_fid_weights(torch_home)  # pytorch-fid would otherwise download them
    env = clean_env(TORCH_HOME=str(torch_home))
    theirs = subprocess.run(
        [sys.executable, "-m", "pytorch_fid", str(a), str(b), "--device", "cpu", "--num-workers", "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert theirs.returncode == 0, theirs.stderr
    expected = last_value(theirs.stdout, "FID:")
    for engine in ("torch", "openvino"):
        ours = subprocess.run(
            [str(CVAE), "fid", str(a), str(b), "--device", "cpu", "--engine", engine],
            capture_output=True,
            text=True,
            env=env,
            timeout=900,
        )
        assert ours.returncode == 0, ours.stderr
        assert last_value(ours.stdout, "FID:") == pytest.approx(expected, rel=1e-3), engine


def test_fid_against_itself_is_zero_and_saved_stats_are_reused(folders, tmp_path, capsys):
    a, b = folders
    assert main(["fid", str(a), str(a), "--device", "cpu"]) == 0
    assert abs(last_value(capsys.readouterr().out, "FID:")) < 1e-3
    stats = tmp_path / "a_stats.npz"
    assert main(["fid", str(a), "--save-stats", str(stats), "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["fid", str(a), str(b), "--device", "cpu"]) == 0
    direct = last_value(capsys.readouterr().out, "FID:")
    assert main(["fid", str(stats), str(b), "--device", "cpu"]) == 0
    assert last_value(capsys.readouterr().out, "FID:") == pytest.approx(direct, rel=1e-6)
    assert direct > 1


def test_folder_search_is_recursive_and_arrays_are_accepted(folders, tmp_path, capsys):
    a, _ = folders
    nested = image_folder(tmp_path / "nested", range(0, 5), 6, seed=0, nested=True)
    images = np.stack([np.asarray(Image.open(p)) for p in sorted(a.glob("*.png"))])
    np.save(tmp_path / "a.npy", images)  # [N,H,W,3] is accepted as well as [N,3,H,W]
    assert main(["fid", str(nested), str(tmp_path / "a.npy"), "--device", "cpu"]) == 0
    assert abs(last_value(capsys.readouterr().out, "FID:")) < 1e-3


def test_kid_prints_mean_and_std(folders, capsys):
    a, b = folders
    assert main(["kid", str(a), str(b), "--device", "cpu", "--subsets", "10", "--subset-size", "20"]) == 0
    out = capsys.readouterr().out.strip().splitlines()[-1]
    assert out.startswith("KID: ") and "±" in out and float(out.split()[1]) > 0


def test_bad_paths_give_one_line_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["fid", str(tmp_path / "empty"), str(tmp_path / "nope")]) == 1
    assert "no images found" in capsys.readouterr().err
    stats = tmp_path / "s.npz"
    np.savez(stats, mu=np.zeros(3), sigma=np.eye(3))
    assert main(["kid", str(stats), str(stats)]) == 1
    assert "KID needs images or features" in capsys.readouterr().err


def test_an_empty_path_is_refused_not_read_as_the_working_folder(tmp_path, capsys, monkeypatch):
    """``cvae fid "$A" b.npz`` with A unset: the fuzzer found it scoring every image below the working
    folder (a checkout with data/raw: 60,000 JPEGs) before failing on their sizes."""
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (32, 32)).save(tmp_path / "stray.png")
    stats = tmp_path / "s.npz"
    np.savez(stats, mu=np.zeros(3), sigma=np.eye(3))
    for argv in (
        ["fid", "", str(stats)],
        ["kid", "", str(stats)],
        ["fid", "", "--save-stats", str(tmp_path / "o.npz")],
    ):
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert err == "error: an empty path was given; name a folder, .npy or .npz file\n", (argv, err)
