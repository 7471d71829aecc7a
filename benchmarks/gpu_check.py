"""Whether the pipeline's code runs on a GPU, agrees there with the CPU, and how fast: one prepared run.

    python benchmarks/gpu_check.py [--device cuda] [--steps 30] [--images 2048] [--matmul-size N] [--json OUT.json]

Made for a machine lent for minutes that has CUDA but may have none of this project's data, DVC or
MLflow, and no package registry: it needs torch, numpy, pydantic, PyYAML, tqdm and Pillow (pydantic
is the one to carry as wheels to an image that has torch). It builds the default model and prior of
``params.yaml`` and feeds them seeded random CIFAR-sized images: whether two devices agree and what a
step costs do not depend on the pictures. Three parts, printed as each finishes:

* ``agreement``: the default model's encoder (posterior mean and log-variance), its decoder on the
  reference's latent, the Gaussian NLL of those decodes, and the prior's denoiser on a fixed noisy
  latent — 64 images, the same weights (untrained; what their initialisation leaves at zero is given small
  seeded noise, so that no output agrees by construction) — on the CPU in fp32 (the reference), then on ``--device`` in
  fp32 (TF32 off: fp32 here means fp32, though cuDNN's convolutions take TF32 by default in training)
  and in bf16 autocast: the largest difference as a share of the reference's largest magnitude, against
  a stated tolerance (``FP32_TOLERANCE``: summation order and convolution algorithms differ;
  ``BF16_TOLERANCE``: 8 bits of mantissa). A miss exits 1.
* ``pipeline``: train → prior → sample at a tiny size on ``--device`` in fp32 and in bf16 autocast,
  through the stages' own classes (``Trainer.fit`` and ``PriorTrainer.fit`` with their checkpoints,
  ``encode_posteriors`` with the mirrored images, the fitted prior's DPM-Solver++ sampler with guidance,
  ``generate``): every loss and latent finite, 100 images that are not one flat colour. A failure exits 1.
* ``speed``: the default trainer's images/s (batch ``train.batch_size``, AdamW, EMA; ``--steps`` steps
  after a warm-up of two) in fp32 and bf16, beside the device's dense matmul rate in the same precision
  (8192² on a GPU, 2048² on a CPU): img/s per TFLOP/s says how much of the device the small model uses.

On a CPU (``--device cpu``) it runs the same, the agreement then against itself: that is how
``tests/test_gpu_check.py`` keeps it working here. What a GPU run gave goes to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from cvae_pipeline.config import load_params  # noqa: E402
from cvae_pipeline.data.prepared import PreparedSplit  # noqa: E402
from cvae_pipeline.models import build_model  # noqa: E402
from cvae_pipeline.precision import BF16, FP32, Precision, native_bf16  # noqa: E402
from cvae_pipeline.prior.diffusion import build_denoiser  # noqa: E402
from cvae_pipeline.runtime import cpu_description  # noqa: E402

PARAMS = load_params(REPO / "params.yaml")
CPU = torch.device("cpu")
CLASSES = [f"class{i}" for i in range(10)]
#: largest |device - CPU| as a share of the CPU reference's largest |value|
FP32_TOLERANCE = 1e-3
BF16_TOLERANCE = 5e-2
TOLERANCES = {FP32.name: FP32_TOLERANCE, BF16.name: BF16_TOLERANCE}


def random_split(count: int, seed: int) -> PreparedSplit:
    """``count`` seeded random uint8 images, the classes in turn."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, 3, 32, 32), dtype=np.uint8)
    return PreparedSplit(images, np.arange(count, dtype=np.int64) % len(CLASSES), CLASSES)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def no_tf32():
    """fp32 matmuls and convolutions in fp32 on the GPU (torch's default lets cuDNN use TF32)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


# --- agreement ----------------------------------------------------------------------------------------------
def agreement_outputs(model, denoiser, batch: dict, device: torch.device, precision: Precision) -> dict:
    """What the model and the denoiser compute for ``batch`` on ``device`` in ``precision``, as fp32 CPU tensors.
    The decoder runs on the batch's reference latent, so its difference is the decoder's own."""
    model = precision.module(copy.deepcopy(model).to(device)).eval()
    denoiser = precision.module(copy.deepcopy(denoiser).to(device)).eval()
    x, y, z, noisy, t = (batch[k].to(device) for k in ("x", "y", "z", "noisy", "t"))
    with torch.no_grad(), precision.autocast(device):
        posterior = model.encode(precision.batch(x), y)
        decoded = model.decode(z, y).float()
        nll = model.likelihood.nll(decoded, x)
        denoised = denoiser(noisy, t, y)
    outputs = {"posterior mean": posterior.mu, "posterior log-variance": posterior.logvar}
    outputs |= {"decoder output": decoded, "Gaussian NLL": nll, "denoiser output": denoised}
    return {name: value.float().cpu() for name, value in outputs.items()}


def unzeroed(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """``module`` with every parameter its initialisation left at zero (biases; the denoiser's output layer,
    zero so that training starts from the identity) set to small seeded noise: an output that is zero by
    construction would agree across devices whatever they compute."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            if not parameter.any():
                parameter.copy_(0.02 * torch.randn(parameter.shape, generator=generator))
    return module


def agreement(device: torch.device) -> list[dict]:
    torch.manual_seed(0)
    model = unzeroed(build_model(PARAMS.model, len(CLASSES)), seed=0).eval()
    cfg = PARAMS.prior
    denoiser = build_denoiser(cfg.denoiser, model.latent_shape, len(CLASSES), cfg.width, cfg.blocks)
    denoiser = unzeroed(denoiser, seed=1).eval()
    split = random_split(64, seed=1)
    generator = torch.Generator().manual_seed(2)
    batch = {
        "x": torch.from_numpy(split.images).float() / 255,
        "y": torch.from_numpy(split.labels),
        "noisy": torch.randn(64, model.latent_dim, generator=generator),
        "t": torch.randint(0, cfg.timesteps, (64,), generator=generator),
    }
    with torch.no_grad():
        batch["z"] = model.encode(batch["x"], batch["y"]).mu.float()
    reference = agreement_outputs(model, denoiser, batch, CPU, FP32)
    rows = []
    for precision in (FP32, BF16):
        with no_tf32():
            outputs = agreement_outputs(model, denoiser, batch, device, precision)
        for name, value in outputs.items():
            ref = reference[name]
            finite = bool(torch.isfinite(value).all())
            error = float((value - ref).abs().max() / ref.abs().max().clamp_min(1e-12)) if finite else float("inf")
            tolerance = TOLERANCES[precision.name]
            rows.append(
                {"precision": precision.name, "output": name, "relative_error": error, "tolerance": tolerance}
                | {"ok": error <= tolerance}
            )
    return rows


# --- the tiny pipeline ----------------------------------------------------------------------------------------
def tiny_pipeline(device: torch.device, precision: Precision, images: int, workdir: Path) -> dict:
    """train (one epoch) → prior (one epoch) → sample (10 per class) on ``device`` in ``precision``."""
    from cvae_pipeline.prior.encoding import encode_posteriors
    from cvae_pipeline.prior.training import PriorTrainer
    from cvae_pipeline.sampling import generate
    from cvae_pipeline.training.loop import Trainer

    started = time.perf_counter()
    train, val = random_split(images, seed=3), random_split(max(images // 4, 64), seed=4)
    train_cfg = PARAMS.train.model_copy(update={"epochs": 1})
    torch.manual_seed(0)
    trainer = Trainer(
        build_model(PARAMS.model, len(CLASSES)), train_cfg, device, train, val, workdir / "train.pt", precision.name
    )
    trainer.use_precision(precision)
    trained = trainer.fit()[-1]
    vae = trainer.eval_model.eval()
    encoded_train = encode_posteriors(vae, train.images, train.labels, hflip=PARAMS.prior.augment == "hflip")
    encoded_val = encode_posteriors(vae, val.images, val.labels)
    prior_cfg = PARAMS.prior.model_copy(update={"epochs": 1, "batch_size": min(PARAMS.prior.batch_size, images)})
    prior_trainer = PriorTrainer(
        prior_cfg,
        encoded_train,
        encoded_val,
        len(CLASSES),
        device,
        workdir / "prior.pt",
        precision.name,
        vae.latent_shape,
    )
    prior_trainer.precision = precision
    fitted = prior_trainer.fit()[-1]
    sample = PARAMS.sample
    sampler = prior_trainer.fitted_prior().to(device).sampler(sample.steps, sample.guidance, sample.solver)
    labels = torch.arange(len(CLASSES), device=device)
    with torch.no_grad(), precision.autocast(device):
        latents = sampler.sample(labels, 1.0, torch.Generator(device=device).manual_seed(0))
    drawn, _ = generate(vae, len(CLASSES), 10, seed=0, progress=False, latents=sampler, precision=precision)
    figures = [trained["train_objective"], trained["val_neg_elbo"], fitted["train_loss"], fitted["val_loss"]]
    checks = {
        "losses finite": all(np.isfinite(figures)),
        "latents finite": bool(torch.isfinite(latents).all()),
        "images drawn": drawn.shape == (10 * len(CLASSES), 3, 32, 32) and drawn.dtype == np.uint8,
        "images not flat": float(drawn.std()) > 1.0,
    }
    return {
        "precision": precision.name,
        "train val -ELBO": trained["val_neg_elbo"],
        "prior val loss": fitted["val_loss"],
        "seconds": time.perf_counter() - started,
        "checks": checks,
        "ok": all(checks.values()),
    }


# --- speed ------------------------------------------------------------------------------------------------------
def matmul_tflops(
    device: torch.device, dtype: torch.dtype, n: int, repeats: int = 10, budget_seconds: float = 10.0
) -> float:
    """The best of up to ``repeats`` timed ``n`` x ``n`` matmuls (fewer when they take over ``budget_seconds``:
    bf16 emulated on a CPU runs at a few GFLOP/s)."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    a @ b
    synchronize(device)
    best, spent = float("inf"), 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        synchronize(device)
        took = time.perf_counter() - start
        best, spent = min(best, took), spent + took
        if spent > budget_seconds:
            break
    return 2 * n**3 / best / 1e12


def trainer_images_per_second(device: torch.device, precision: Precision, steps: int) -> float:
    """The default trainer's rate over ``steps`` steps (each ends in a host synchronisation: ``train_epoch``
    reads the loss every step), after a warm-up epoch of two steps on the same model."""
    from cvae_pipeline.training.loop import Trainer

    cfg = PARAMS.train.model_copy(update={"epochs": 1, "warmup_epochs": 0, "kl_warmup_epochs": 0})
    torch.manual_seed(0)
    model = build_model(PARAMS.model, len(CLASSES))
    warm = random_split(cfg.batch_size * 2, seed=5)
    timed = random_split(cfg.batch_size * steps, seed=6)
    nowhere = Path(tempfile.gettempdir()) / "gpu-check-unused.pt"
    for split in (warm, timed):
        trainer = Trainer(model, cfg, device, split, warm, nowhere, "speed")
        trainer.use_precision(precision)
        record = trainer.train_epoch()
    return record["images_per_second"]


def speed(device: torch.device, steps: int, matmul_size: int) -> list[dict]:
    rows = []
    for precision, dtype in ((FP32, torch.float32), (BF16, torch.bfloat16)):
        tflops = matmul_tflops(device, dtype, matmul_size)
        images = trainer_images_per_second(device, precision, steps)
        rows.append({"precision": precision.name, "matmul_tflops": tflops, "images_per_second": images})
    return rows


# --- the run ------------------------------------------------------------------------------------------------------
def describe(device: torch.device) -> dict:
    about = {"torch": torch.__version__, "cpu": cpu_description(), "device": str(device)}
    about["native_bf16"] = native_bf16(device)
    if device.type == "cuda":
        about["gpu"] = torch.cuda.get_device_name(device)
        about["cuda"] = torch.version.cuda
        about["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
        about["matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    return about


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per precision")
    parser.add_argument("--images", type=int, default=2048, help="training images of the tiny pipeline")
    parser.add_argument(
        "--matmul-size", type=int, help="the reference matmul's n (default: 8192 on a GPU, 2048 on a CPU)"
    )
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: torch sees no CUDA device here; run with --device cpu to check the script itself")
        return 2
    device = torch.device(args.device)
    result: dict = {"machine": describe(device)}
    print(json.dumps(result["machine"]))

    result["agreement"] = agreement(device)
    print(f"agreement with the CPU in fp32 (largest difference / largest reference value) on {device}:")
    for row in result["agreement"]:
        verdict = "ok" if row["ok"] else "MISS"
        error, tolerance = row["relative_error"], row["tolerance"]
        print(f"  {row['precision']:5} {row['output']:23} {error:.2e}  (≤ {tolerance:.0e}) {verdict}")

    result["pipeline"] = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as workdir:
        for precision in (FP32, BF16):
            row = tiny_pipeline(device, precision, args.images, Path(workdir))
            result["pipeline"].append(row)
            failed = [name for name, ok in row["checks"].items() if not ok]
            verdict = "ok" if row["ok"] else f"FAILED {failed}"
            print(
                f"tiny train → prior → sample on {device}, {precision.name}: {verdict} (val -ELBO "
                f"{row['train val -ELBO']:.1f}, prior val loss {row['prior val loss']:.4f}, {row['seconds']:.1f} s)"
            )

    result["speed"] = speed(device, args.steps, args.matmul_size or (8192 if device.type == "cuda" else 2048))
    for row in result["speed"]:
        per_tflops = row["images_per_second"] / row["matmul_tflops"]
        print(
            f"default trainer, {row['precision']}: {row['images_per_second']:,.0f} img/s; matmul "
            f"{row['matmul_tflops']:.2f} TFLOP/s; {per_tflops:,.0f} img/s per TFLOP/s"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    ok = all(row["ok"] for row in result["agreement"] + result["pipeline"])
    print("all checks passed" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
