"""Training throughput: the project's loop vs the original write-up's loop, and per-backbone cost.

    python benchmarks/train_throughput.py [--images 10000] [--json OUT]

Part 1 trains the classic ``mlp`` CVAE (same model, same data, batch 64, Adam
1e-3, BCE + KL) two ways and reports images/s and their ratio:

* ``project``: the project's ``Trainer`` — whole-batch gathers from the uint8
  array, conversion on the batch (EMA and gradient clipping off, as in the
  original);
* ``original``: the write-up's loop — a torchvision-style ``Dataset`` whose
  ``__getitem__`` does ``PIL.Image.fromarray`` + ``ToTensor`` per image, a
  ``DataLoader`` with batch 64 and ``num_workers=0``.

The model's own forward/backward bounds the first ratio: at batch 64 the classic
MLP costs about as much per image as the original's per-image PIL work, so even
free data could at most double the throughput. The serving of batches alone
(no model) is therefore measured too.

Part 2 reports images/s and peak memory (RSS on CPU, allocated memory on CUDA)
of one training epoch for ``conv`` and ``resnet`` at the default width of
``params.yaml``. Each measurement runs in its own process, so peak memory is
that model's alone. Run it alone on the machine: two heavy processes at once
slow each other several-fold. Needs ``data/prepared`` (``dvc repro prepare``).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from cvae_pipeline.config import ModelParams, load_params  # noqa: E402
from cvae_pipeline.data.prepared import PreparedSplit, load_prepared  # noqa: E402
from cvae_pipeline.models import build_model  # noqa: E402
from cvae_pipeline.training.loop import Trainer  # noqa: E402

CLASSIC = dict(
    backbone="mlp", width=128, latent_dim=32, latent_resolution=1, conditioning="concat", likelihood="bernoulli"
)
DEFAULTS = load_params(REPO / "params.yaml")


def subset(split: PreparedSplit, n: int) -> PreparedSplit:
    return PreparedSplit(np.array(split.images[:n]), split.labels[:n].copy(), split.classes)


def project_loop(model_params: ModelParams, data: PreparedSplit, batch_size: int) -> float:
    """Images/s of one epoch of the project's Trainer (after a warm-up epoch on a few batches)."""
    cfg = DEFAULTS.train.model_copy(
        update=dict(
            epochs=1,
            batch_size=batch_size,
            lr=1e-3,
            optimizer="adam",
            lr_schedule="constant",
            warmup_epochs=0,
            kl_warmup_epochs=0,
            grad_clip=None,
            ema_decay=None,
        )
    )
    torch.manual_seed(0)
    model = build_model(model_params, len(data.classes))
    warm = subset(data, batch_size * 3)
    Trainer(model, cfg, DEVICE, warm, warm, Path("/nonexistent"), "bench").train_epoch()
    trainer = Trainer(model, cfg, DEVICE, data, warm, Path("/nonexistent"), "bench")
    return trainer.train_epoch()["images_per_second"]


def original_loop(model_params: ModelParams, data: PreparedSplit, batch_size: int) -> float:
    """Images/s of the write-up's loop: per-image PIL + ToTensor through a DataLoader."""
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms

    class CifarArrays(Dataset):
        def __init__(self, images, labels):
            self.images = images.transpose(0, 2, 3, 1)  # HWC, as torchvision's CIFAR10 stores them
            self.labels = labels
            self.transform = transforms.ToTensor()

        def __len__(self):
            return len(self.labels)

        def __getitem__(self, i):
            return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])

    torch.manual_seed(0)
    model = build_model(model_params, len(data.classes)).to(DEVICE)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(CifarArrays(data.images, data.labels), batch_size=batch_size, shuffle=True, num_workers=0)

    def step(x, y):
        x, y = x.to(DEVICE), y.to(DEVICE)
        loss = model.loss(x, y).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for i, (x, y) in enumerate(loader):  # warm-up, as for the project loop
        step(x, y)
        if i == 2:
            break
    start, seen = time.perf_counter(), 0
    for x, y in loader:
        step(x, y)
        seen += len(y)
    return seen / (time.perf_counter() - start)


def data_path_only(data: PreparedSplit, batch_size: int) -> dict[str, float]:
    """Images/s of serving batches alone (no model): BatchStream vs the per-image Dataset + DataLoader."""
    from PIL import Image
    from torch.utils.data import DataLoader
    from torchvision import transforms

    from cvae_pipeline.batches import BatchStream

    stream = BatchStream(data.images, data.labels, batch_size, DEVICE, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    for _ in stream:
        pass
    project = len(data.labels) / (time.perf_counter() - start)

    to_tensor = transforms.ToTensor()
    hwc = data.images.transpose(0, 2, 3, 1)
    items = [(hwc[i], int(data.labels[i])) for i in range(len(data.labels))]
    loader = DataLoader(
        items,
        batch_size=batch_size,
        shuffle=True,
        num_workers=0,
        collate_fn=lambda b: (
            torch.stack([to_tensor(Image.fromarray(x)) for x, _ in b]),
            torch.tensor([y for _, y in b]),
        ),
    )
    start = time.perf_counter()
    for _ in loader:
        pass
    original = len(data.labels) / (time.perf_counter() - start)
    return {"project": project, "original": original}


def peak_memory_mb() -> float:
    if DEVICE.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(kind: str, images: int) -> dict:
    data = subset(load_prepared(REPO / "data" / "prepared", "train"), images)
    defaults = DEFAULTS
    if kind == "data":
        return {"kind": kind, **data_path_only(data, 64)}
    if kind in ("project", "original"):
        params = DEFAULTS.model.model_copy(update=CLASSIC)
        ips = (project_loop if kind == "project" else original_loop)(params, data, 64)
    else:
        params = defaults.model.model_copy(update={"backbone": kind})
        ips = project_loop(params, data, defaults.train.batch_size)
    return {
        "kind": kind,
        "images_per_second": ips,
        "peak_memory_mb": peak_memory_mb(),
        "width": params.width,
        "latent_dim": params.latent_dim,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10000, help="training images per measurement")
    parser.add_argument("--backbone-images", type=int, default=2560, help="images for conv/resnet")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--only", help=argparse.SUPPRESS)  # internal: one measurement per process
    args = parser.parse_args()
    if args.only:
        n = args.images if args.only in ("project", "original", "data") else args.backbone_images
        print(json.dumps(measure(args.only, n)))
        return

    results = {}
    for kind in ("project", "original", "data", "conv", "resnet"):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--only",
                kind,
                "--images",
                str(args.images),
                "--backbone-images",
                str(args.backbone_images),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        results[kind] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"  measured {kind}", file=sys.stderr)
    ratio = results["project"]["images_per_second"] / results["original"]["images_per_second"]
    cpu = platform.processor() or platform.machine()
    machine = f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}, {DEVICE}"
    print(f"machine: {machine}")
    print(f"mlp (classic CVAE), batch 64, {args.images} images:")
    print(f"  project loop : {results['project']['images_per_second']:8.0f} images/s")
    print(f"  original loop: {results['original']['images_per_second']:8.0f} images/s")
    print(f"  ratio        : {ratio:8.1f}x")
    data = results["data"]
    print(f"serving batches alone (no model), batch 64, {args.images} images:")
    print(f"  project (BatchStream)          : {data['project']:10.0f} images/s")
    print(f"  original (PIL + ToTensor/item) : {data['original']:10.0f} images/s")
    print(f"  ratio                          : {data['project'] / data['original']:10.1f}x")
    print(f"default width, batch from params.yaml, {args.backbone_images} images:")
    for kind in ("conv", "resnet"):
        r = results[kind]
        speed = f"{r['images_per_second']:6.0f} images/s, peak memory {r['peak_memory_mb']:.0f} MB"
        print(f"  {kind:6s} (width {r['width']}): {speed}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "ratio": ratio, **results}, indent=2) + "\n")


DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

if __name__ == "__main__":
    main()
