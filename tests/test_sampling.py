"""The sample grid that train, prior and sample log: torchvision's layout, without importing torchvision."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from cvae_pipeline.sampling import grid_of


@pytest.mark.parametrize(
    "per_class, num_classes, per_row", [(3, 4, 3), (5, 3, 10), (2, 10, 10)], ids=["full", "short-rows", "one-row"]
)
def test_the_grid_is_torchvisions_make_grid(per_class, num_classes, per_row):
    from torchvision.utils import make_grid

    rng = np.random.default_rng(0)
    labels = rng.permutation(np.repeat(np.arange(num_classes), per_class))
    images = rng.integers(0, 256, (len(labels), 3, 8, 6), dtype=np.uint8)
    tiles = np.concatenate([images[labels == c][:per_row] for c in range(num_classes)])
    expected = make_grid(torch.from_numpy(tiles).float() / 255, nrow=per_row, padding=2, pad_value=1.0)
    expected = (expected.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert np.array_equal(np.asarray(grid_of(images, labels, num_classes, per_row)), expected)


def test_drawing_a_grid_imports_no_torchvision():
    """Importing torchvision (and with it torch._dynamo) costs every stage that logs a grid ~1.5 s."""
    script = """
import sys
import numpy as np
import cvae_pipeline.prior.pipeline, cvae_pipeline.serving, cvae_pipeline.training.reporting
from cvae_pipeline.sampling import grid_of
grid_of(np.zeros((4, 3, 8, 8), np.uint8), np.array([0, 1, 0, 1]), 2)
print(sorted(m for m in sys.modules if m.split(".")[0] == "torchvision"))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
