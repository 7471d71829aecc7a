"""FID feature extraction: the project's extractor vs pytorch-fid 0.3.0 on the same images.

    python benchmarks/fid_throughput.py [--images 1000] [--json OUT]

Takes the first ``--images`` CIFAR-10 test images (stratified by nothing, in
file order) from ``data/prepared`` (``dvc repro prepare``), writes them as PNG
folders A (first half) and B (second half), and measures, alone on the
machine:

* ``project``: ``cvae_pipeline.metrics.inception.InceptionFeatures`` (the shipped
  network's weights in pytorch-fid's architecture, batch norm folded into the
  convolutions, traced and frozen, channels-last, inference mode) and the project's FID;
* ``pytorch-fid``: pytorch-fid 0.3.0's ``InceptionV3`` and ``get_activations``
  exactly as ``python -m pytorch_fid`` runs them (weights installed offline from
  the same network, see ``metrics/pytorch_fid_weights.py``; ``num_workers=0``) and
  pytorch-fid's ``calculate_frechet_distance``.

It prints images/s for both, their ratio, and FID(A, B) by both (they must agree
to 0.1%). Batch size 50 for both (pytorch-fid's default).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from cvae_pipeline.data.prepared import load_prepared  # noqa: E402
from cvae_pipeline.metrics.fid import Statistics, frechet_distance  # noqa: E402
from cvae_pipeline.metrics.image_sets import read_folder  # noqa: E402
from cvae_pipeline.metrics.inception import InceptionFeatures  # noqa: E402
from cvae_pipeline.metrics.pytorch_fid_weights import install_pytorch_fid_weights  # noqa: E402


def write_pngs(images: np.ndarray, folder: Path) -> Path:
    folder.mkdir(parents=True)
    for i, img in enumerate(images):
        Image.fromarray(img.transpose(1, 2, 0)).save(folder / f"{i:05d}.png")
    return folder


def project_features(folders: list[Path], device: torch.device, engine: str = "auto") -> tuple[list[np.ndarray], float]:
    """Features of each folder by the project's extractor (``evaluate.engine: <engine>``) and the seconds they
    took, reading the PNGs included; the extractor's set-up and first call are not timed."""
    extractor = InceptionFeatures(device, batch_size=50, engine=engine)
    extractor(np.zeros((2, 3, 32, 32), np.uint8), progress=False)  # warm-up (first-call JIT profiling)
    start = time.perf_counter()
    feats = [extractor(read_folder(f), progress=False) for f in folders]  # includes reading the PNGs
    return feats, time.perf_counter() - start


def pytorch_fid_features(folders: list[Path], device: torch.device) -> tuple[list[np.ndarray], float]:
    from pytorch_fid.fid_score import IMAGE_EXTENSIONS, get_activations
    from pytorch_fid.inception import InceptionV3

    model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).to(device).eval()
    with torch.no_grad():
        model(torch.zeros(2, 3, 32, 32, device=device))  # warm-up
    start = time.perf_counter()
    feats = []
    for folder in folders:
        files = sorted(p for ext in IMAGE_EXTENSIONS for p in folder.glob(f"*.{ext}"))
        feats.append(get_activations(files, model, batch_size=50, dims=2048, device=device, num_workers=0))
    return feats, time.perf_counter() - start


def fid(a: np.ndarray, b: np.ndarray) -> float:
    sa, sb = Statistics.of(a), Statistics.of(b)
    return frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma)


def pytorch_fid_fid(a: np.ndarray, b: np.ndarray) -> float:
    from pytorch_fid.fid_score import calculate_frechet_distance

    sa, sb = Statistics.of(a), Statistics.of(b)
    return float(calculate_frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    test = load_prepared(REPO / "data" / "prepared", "test")
    images = np.asarray(test.images[: args.images])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        half = len(images) // 2
        folders = [write_pngs(images[:half], tmp / "A"), write_pngs(images[half:], tmp / "B")]
        os.environ["TORCH_HOME"] = str(tmp / "torch_home")
        install_pytorch_fid_weights()
        ours, t_ours = project_features(folders, device)
        theirs, t_theirs = pytorch_fid_features(folders, device)
    n = len(images)
    fid_ours, fid_theirs = fid(*ours), pytorch_fid_fid(*theirs)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, {device}",
        "images": n,
        "project_images_per_second": n / t_ours,
        "pytorch_fid_images_per_second": n / t_theirs,
        "ratio": t_theirs / t_ours,
        "fid_project": fid_ours,
        "fid_pytorch_fid": fid_theirs,
        "fid_relative_difference": abs(fid_ours - fid_theirs) / fid_theirs,
        "max_feature_difference": float(max(np.abs(a - b).max() for a, b in zip(ours, theirs))),
    }
    print(f"machine: {result['machine']}")
    print(f"{n} CIFAR-10 test images as PNG, batch 50, FID of the first half vs the second:")
    print(f"  project     : {result['project_images_per_second']:6.2f} images/s   FID {fid_ours:.4f}")
    print(f"  pytorch-fid : {result['pytorch_fid_images_per_second']:6.2f} images/s   FID {fid_theirs:.4f}")
    print(
        f"  ratio       : {result['ratio']:6.2f}x   FID difference {100 * result['fid_relative_difference']:.4f}%"
        f"   max feature difference {result['max_feature_difference']:.2e}"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
