"""What each stage process pays before its real work, old way against new, measured side by side.

    python benchmarks/stage_startup.py [--repeats 5]

Every stage is its own Python process (DVC runs them so), and the test suite starts a few hundred
of them on tiny data, where fixed costs dominate. Each row is timed in fresh processes, the two ways
alternated ``--repeats`` times, medians printed:

* ``FID network``: building it (the TorchScript file's weights into pytorch-fid's blocks, batch norms
  folded, traced, frozen: what every ``fid_reference``/``evaluate``/``cvae fid`` did) against loading
  the frozen file from the cache (``metrics/inception_cache.py``), with the largest feature difference
  between the two (0 expected);
* ``sample grid``: ``torchvision.utils.make_grid`` (its import included: it imports torch._dynamo)
  against ``sampling.grid_of`` (what train, prior and sample draw), 100 images;
* ``image-folder index`` (``prepare``): torchvision's ``find_classes`` + ``make_dataset`` (their
  import included: torchvision, and with it torch) against ``data.readers.index_image_folders``
  (what ``prepare`` uses: it needs torch for nothing else), 10 class folders of 100 files each. This
  snippet alone starts without ``import torch``.

Needs no data. Run it alone: a concurrent heavy process slows every row.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from cvae_pipeline.runtime import cpu_description  # noqa: E402

#: each snippet runs in a fresh interpreter after ``import torch`` (paid by every stage either way)
#: and prints the seconds of the part measured, as JSON
NETWORK = """
import json, os, time, torch
from cvae_pipeline.metrics import inception
start = time.perf_counter()
network = inception.load_inception()
seconds = time.perf_counter() - start
x = inception.preprocess(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8,
                                       generator=torch.Generator().manual_seed(0)))
with torch.inference_mode():
    features = network(x.contiguous(memory_format=torch.channels_last))
torch.save(features, os.environ["FEATURES_OUT"])
print(json.dumps({"seconds": seconds}))
"""

GRID = """
import json, time, numpy as np, torch
images = np.random.default_rng(0).integers(0, 256, (100, 3, 32, 32), dtype=np.uint8)
labels = np.repeat(np.arange(10), 10)
start = time.perf_counter()
if {torchvision}:
    from torchvision.utils import make_grid
    tiles = np.concatenate([images[labels == c] for c in range(10)])
    grid = make_grid(torch.from_numpy(tiles).float() / 255, nrow=10, padding=2, pad_value=1.0)
    (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
else:
    from cvae_pipeline.sampling import grid_of
    grid_of(images, labels, 10)
print(json.dumps({{"seconds": time.perf_counter() - start}}))
"""

INDEX = """
import json, sys, time
from pathlib import Path
from cvae_pipeline.data.readers import IMAGE_EXTENSIONS, class_folders, index_image_folders  # prepare's either way
folder = Path({folder!r})
start = time.perf_counter()
if {torchvision}:
    from torchvision.datasets.folder import find_classes, make_dataset
    classes, class_to_idx = find_classes(str(folder))
    samples = make_dataset(str(folder), class_to_idx, extensions=IMAGE_EXTENSIONS)
else:
    samples = index_image_folders(folder, class_folders(folder))
seconds = time.perf_counter() - start
assert len(samples) == 1000 and ("torch" in sys.modules) == {torchvision}
print(json.dumps({{"seconds": seconds}}))
"""


def timed(snippet: str, env: dict[str, str]) -> float:
    result = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, env=env, timeout=600)
    if result.returncode != 0:
        raise SystemExit(f"a benchmark process failed: {result.stderr.strip().splitlines()[-1]}")
    return json.loads(result.stdout.strip().splitlines()[-1])["seconds"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    base = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    print(f"CPU: {cpu_description()}; torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        (scratch / "not-a-folder").write_text("")  # a cache folder that cannot be made: always a rebuild
        ways = {
            "built": {"CVAE_CACHE_DIR": str(scratch / "not-a-folder" / "cache")},
            "cached": {"CVAE_CACHE_DIR": str(scratch / "cache")},
        }
        timed(NETWORK, {**base, **ways["cached"], "FEATURES_OUT": str(scratch / "warm.pt")})  # fills the cache
        seconds = {way: [] for way in ways}
        for _ in range(args.repeats):
            for way, env in ways.items():
                seconds[way].append(timed(NETWORK, {**base, **env, "FEATURES_OUT": str(scratch / f"{way}.pt")}))
        difference = (torch.load(scratch / "built.pt") - torch.load(scratch / "cached.pt")).abs().max().item()
        built, cached = (statistics.median(seconds[w]) for w in ways)
        print(
            f"FID network: built {built:.2f} s, cached {cached:.2f} s ({built / cached:.0f}x); "
            f"largest feature difference {difference:g}"
        )
        grid = {True: [], False: []}
        for _ in range(args.repeats):
            for torchvision in grid:
                grid[torchvision].append(timed(GRID.format(torchvision=torchvision), base))
        old, new = statistics.median(grid[True]), statistics.median(grid[False])
        print(f"sample grid: torchvision make_grid (import included) {old:.2f} s, grid_of {new:.3f} s")
        folder = scratch / "images"
        for c in range(10):
            (folder / f"class{c}").mkdir(parents=True)
            for i in range(100):
                (folder / f"class{c}" / f"{i:03d}.jpg").write_bytes(b"")
        index = {True: [], False: []}
        for _ in range(args.repeats):
            for torchvision in index:
                index[torchvision].append(timed(INDEX.format(folder=str(folder), torchvision=torchvision), base))
        old, new = statistics.median(index[True]), statistics.median(index[False])
        print(
            f"image-folder index: torchvision find_classes + make_dataset (import included) {old:.2f} s, "
            f"index_image_folders {new:.3f} s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
