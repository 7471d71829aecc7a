"""The FID network run by OpenVINO's CPU runtime, in fp32.

OpenVINO's fp32 kernels run the FID Inception 1.45x (Intel Xeon with AMX) and 1.24x (AMD EPYC, AVX2)
as fast as the traced, frozen, channels-last torch network, with the same features to ~1e-6
(``benchmarks/speed.py``; tested against the torch network and pytorch-fid). Its outputs do not depend
on the batch a picture is in, and repeat bit for bit. fp32 is forced: on a CPU with bf16 OpenVINO
would otherwise infer in bf16, and FID must stay pytorch-fid's. bf16 is there only when asked for
(``cvae fid --precision bf16``, a screening figure printed with its measured deviation from fp32).

The network is converted from the torch one (``load_inception(optimize=False)``) once and kept in the
cache folder as OpenVINO IR (portable across CPUs, unlike a compiled blob), each file with its sha256
like the torch network's; a process reads and compiles it in ~0.1 s.
"""

from __future__ import annotations

import importlib.util
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..config import INCEPTION_ENGINES
from ..errors import ConfigError
from . import inception_cache

#: bump when what the files hold changes
FORMAT = 1


def available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def resolve_engine(name: str, device: torch.device, key: str = "evaluate.engine") -> str:
    """``auto`` -> ``openvino`` on the CPU when the package is installed, else ``torch``; an explicit
    ``openvino`` that cannot run is one line naming ``key``."""
    if name not in INCEPTION_ENGINES:
        raise ConfigError(f"{key} = {name!r}: expected one of {', '.join(INCEPTION_ENGINES)}")
    if name == "openvino":
        if device.type != "cpu":
            raise ConfigError(
                f"{key} = 'openvino' runs on the CPU, but the device is {device.type}; use 'auto' or 'torch'"
            )
        if not available():
            raise ConfigError(f"{key} = 'openvino' but the openvino package is not installed: pip install openvino")
    if name == "auto":
        return "openvino" if device.type == "cpu" and available() else "torch"
    return name


def _cache_files(weights_sha1: str, version: str) -> tuple[Path, Path]:
    stem = f"fid-inception-{weights_sha1[:12]}-openvino{version}-v{FORMAT}"
    folder = inception_cache.cache_dir()
    return folder / f"{stem}.xml", folder / f"{stem}.bin"


class OpenVINOInception:
    """Callable like the torch network: a preprocessed float batch ``[N,3,299,299]`` -> ``[N,2048]``."""

    def __init__(self, build_torch_network: Callable[[], torch.nn.Module], weights_sha1: str, precision: str = "fp32"):
        """``build_torch_network`` is called only when the cache holds no valid IR of ``weights_sha1``;
        ``precision`` ``bf16`` (screening only, on a CPU with native bf16) compiles the same IR to infer in bf16."""
        import openvino as ov

        core = ov.Core()
        files = _cache_files(weights_sha1, ov.__version__.split("-")[0])
        model = self._cached(ov, core, files)
        if model is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.jit.trace's deprecation notices, from the converter
                model = ov.convert_model(build_torch_network().eval(), example_input=torch.zeros(1, 3, 299, 299))
            self._store(ov, model, files)
        config = {
            "INFERENCE_PRECISION_HINT": {"fp32": "f32", "bf16": "bf16"}[precision],
            "PERFORMANCE_HINT": "LATENCY",  # one stream on all the threads: batches come one at a time
            "INFERENCE_NUM_THREADS": torch.get_num_threads(),  # the thread budget the user gave torch
        }
        self.request = core.compile_model(model, "CPU", config).create_infer_request()

    @staticmethod
    def _cached(ov, core, files: tuple[Path, Path]):
        xml, weights = (inception_cache.read_verified(path) for path in files)
        if xml is None or weights is None:
            return None
        try:
            return core.read_model(model=xml, weights=ov.Tensor(np.frombuffer(weights, dtype=np.uint8).copy()))
        except RuntimeError:
            return None

    @staticmethod
    def _store(ov, model, files: tuple[Path, Path]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            xml = Path(tmp) / "model.xml"
            ov.save_model(model, xml, compress_to_fp16=False)  # fp16 weights would change the features
            data = {files[0]: xml.read_bytes(), files[1]: xml.with_suffix(".bin").read_bytes()}
        inception_cache.write_verified(data)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        out = self.request.infer({0: batch.float().contiguous().numpy()})[0]
        return torch.from_numpy(np.array(out))
