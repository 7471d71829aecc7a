"""How fast each heavy part runs on this CPU, and how close it gets to the machine's limit — in one run.

    python benchmarks/speed.py [--steps 12] [--samples 10000] [--fid-images 500] [--seed 1] [--skip trainer,...]
    python benchmarks/speed.py --profile [--steps 8] [--top 12]     # where a training step's time goes

Needs ``data/prepared`` (``dvc repro prepare``; the experiment rows bring the rest up to date). Prints
the CPU model, torch's capability and threads, then, every row measured in this one run (compare ratios,
not figures from different runs):

* ``matmul``: a 2048x2048 matmul in fp32 and bf16, GFLOP/s — the machine's reference rate;
* ``trainer``: the default model's training step (batch ``train.batch_size``, AdamW, EMA) in fp32,
  fp32 channels-last, bf16 and bf16 channels-last; images/s and peak memory (each row its own process);
  ``fp32 before`` = the loop as it was before the speed work (per-tensor AdamW and EMA); ``fp32 compiled``
  / ``bf16 compiled`` = ``torch.compile`` (inductor) of the model, with its compile time;
* ``prior``: the diffusion prior's training step at its default size, latents/s, fp32 and bf16;
* ``sample``: drawing and decoding ``--samples`` images with the diffusion prior at the default
  steps and guidance, fp32 and bf16, images/s (an untrained prior: the cost does not depend on the weights);
* ``fid``: Inception features of ``--fid-images`` CIFAR-10 test images read from PNGs: pytorch-fid vs the
  project's extractor with each ``evaluate.engine`` (torch; OpenVINO, ``auto``'s choice on the CPU) and vs
  the torch network ``torch.compile``d, each with its attained GFLOP/s as a share of the fp32 matmul rate and
  its largest feature difference from pytorch-fid;
* ``experiment``: a whole training experiment before and after — ``dvc exp run -S train.seed=1`` (train,
  prior, sample, evaluate at the default sample count) with every stage in fp32, then at the defaults
  (``precision: auto``): wall minutes, each stage's figures and FID. Two real experiments of this
  repository (named ``speed-before-<time>`` and ``speed-after-<time>``; ``dvc exp show`` and MLflow list
  them), run in a copy of the workspace (``--temp``): tens of minutes each. ``--skip experiment`` leaves
  them out;
* ``queue``: a queued ``sample.guidance`` sweep of two experiments at ``dvc queue start -j 1`` against two
  others at ``-j 2`` on the workspace's trained model and prior (after ``dvc repro``; ~15 min): wall
  minutes and the stages each experiment ran (``sample`` and ``evaluate`` only, if DVC re-runs exactly
  what changed). Each also gets ``--queue-set`` (default ``evaluate.likelihood_images=1000``: the
  likelihood bound on all 10,000 test images is not what a sampling sweep is about). The experiments stay
  in ``dvc exp show`` and MLflow (``queue-j<N>-<guidance>``); ``dvc exp remove`` them when done.

``--profile`` instead profiles the default trainer's step (``torch.profiler``, self CPU time of every
operator over ``--steps`` steps after a warm-up) in fp32 and, where the CPU has native bf16, in bf16:
grouped (convolutions forward/backward, matmuls, normalisation, optimiser + EMA, dtype casts, the rest),
each group's share and bf16 speed-up, then the ``--top`` operators. ``speed.py`` says how much; this, where.

Run it alone: a concurrent heavy process slows every row several-fold. bf16 rows on a CPU without
native bf16 (no AVX512-BF16/AMX) measure torch's emulation, which is what ``precision: auto`` avoids there.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from cvae_pipeline.config import load_params  # noqa: E402
from cvae_pipeline.precision import BF16, BF16_CHANNELS_LAST, FP32, Precision, native_bf16  # noqa: E402
from cvae_pipeline.runtime import cpu_description  # noqa: E402

PARAMS = load_params(REPO / "params.yaml")
CPU = torch.device("cpu")
EMULATED_SAMPLES = 500
TRAINER_ROWS = {
    "fp32 before": (FP32, "before"),
    "fp32": (FP32, ""),
    "fp32 channels-last": (Precision("fp32", True), ""),
    "bf16": (BF16, ""),
    "bf16 channels-last": (BF16_CHANNELS_LAST, ""),
    "fp32 compiled": (FP32, "compile"),
    "bf16 compiled": (BF16, "compile"),
}


def matmul_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 10, budget_seconds: float = 10.0) -> float:
    """The best of up to ``repeats`` timed matmuls, fewer when they take longer than ``budget_seconds`` in all
    (bf16 emulated on a CPU without it runs at a few GFLOP/s)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best, spent = float("inf"), 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        took = time.perf_counter() - start
        best, spent = min(best, took), spent + took
        if spent > budget_seconds:
            break
    return 2 * n**3 / best / 1e9


# --- one trainer row, in its own process (peak memory is then that row's alone) ---------------------------
def before_the_speed_work(trainer) -> None:
    """Give ``trainer`` the optimiser and EMA the loop had before the speed work: torch's default AdamW on
    CPU (a loop over the parameters, where the loop now uses the fused one) and a per-tensor EMA update
    (where it now does one ``_foreach_lerp_``). The LR schedule is constant: it costs the same either way."""
    from torch.optim.swa_utils import AveragedModel

    cfg = trainer.cfg
    trainer.optimizer = torch.optim.AdamW(trainer.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer, lambda step: 1.0)

    def per_tensor(averaged, current, num):
        d = min(cfg.ema_decay, (1.0 + float(num)) / (10.0 + float(num)))
        return averaged * d + current * (1.0 - d)

    trainer.ema = AveragedModel(trainer.model, avg_fn=per_tensor, use_buffers=True)


def warmed_trainer(precision: Precision, steps: int, variant: str = ""):
    """A ``Trainer`` of the default model (seed 0) over the first ``steps`` batches of the training split,
    at ``precision``, after a warm-up epoch of two batches on the same model (oneDNN's kernel choice; for
    ``variant="compile"`` the compilation itself); ``variant="before"``: :func:`before_the_speed_work`.
    Returns the trainer and the seconds its set-up and warm-up took."""
    from cvae_pipeline.data.prepared import PreparedSplit, load_prepared
    from cvae_pipeline.models import build_model
    from cvae_pipeline.training.loop import Trainer

    cfg = PARAMS.train.model_copy(update={"epochs": 1, "warmup_epochs": 0, "kl_warmup_epochs": 0})
    train = load_prepared(REPO / "data" / "prepared", "train")

    def subset(k: int) -> PreparedSplit:
        return PreparedSplit(np.array(train.images[:k]), train.labels[:k].copy(), train.classes)

    torch.manual_seed(0)
    model = build_model(PARAMS.model, len(train.classes))
    started = time.perf_counter()
    if variant == "compile":
        model.forward = torch.compile(model.forward)
    warm = subset(cfg.batch_size * 2)
    trainer = Trainer(model, cfg, CPU, subset(cfg.batch_size * steps), warm, Path("/nonexistent"), "bench")
    warm_up = Trainer(model, cfg, CPU, warm, warm, Path("/nonexistent"), "bench")
    for t in (trainer, warm_up):
        if variant == "before":
            before_the_speed_work(t)
        t.use_precision(precision)
    warm_up.train_epoch()
    return trainer, time.perf_counter() - started


def trainer_row(name: str, steps: int) -> dict:
    precision, variant = TRAINER_ROWS[name]
    trainer, setup_seconds = warmed_trainer(precision, steps, variant)
    compile_seconds = setup_seconds if variant == "compile" else 0.0
    record = trainer.train_epoch()
    return {
        "images_per_second": record["images_per_second"],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "compile_seconds": compile_seconds,
    }


def run_row_in_subprocess(kind: str, name: str, steps: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--row", kind, name, "--steps", str(steps)],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- the prior's training and sampling ---------------------------------------------------------------------
PRIOR_BATCHES = (256, 512, 1024, 2048)


def prior_rows(precisions: tuple[Precision, ...]) -> dict:
    """Latents/s of the prior's training step in each precision at ``prior.batch_size``, and in fp32 at
    other batch sizes (a larger batch is fewer, better-used matmuls, but fewer optimiser steps)."""
    from cvae_pipeline.prior.encoding import EncodedSet
    from cvae_pipeline.prior.training import PriorTrainer

    cfg = PARAMS.prior
    dim = PARAMS.model.latent_dim  # the flat latent (latent_resolution only shapes it into a map)
    rng = np.random.default_rng(0)
    n = max(PRIOR_BATCHES) * 2
    encoded = EncodedSet(
        rng.standard_normal((n, dim)).astype(np.float32),
        np.full((n, dim), 0.3, np.float32),
        np.repeat(np.arange(10), n // 10 + 1)[:n],
    )
    rows = {}
    for batch in PRIOR_BATCHES:
        sized = cfg.model_copy(update={"batch_size": batch})
        trainer = PriorTrainer(
            sized, encoded, encoded, 10, CPU, Path("/nonexistent"), "bench", PARAMS.model.latent_shape
        )
        for p in precisions if batch == cfg.batch_size else (FP32,):
            rows[f"{p.name}, batch {batch}"] = batch / trainer.seconds_per_step(p)
    return rows


def sample_rows(samples: int, precisions: tuple[Precision, ...]) -> dict:
    from cvae_pipeline.models import build_model
    from cvae_pipeline.prior.artifact import DiffusionPrior
    from cvae_pipeline.prior.diffusion import GaussianDiffusion, build_denoiser
    from cvae_pipeline.sampling import generate

    cfg, sample = PARAMS.prior, PARAMS.sample
    torch.manual_seed(0)
    model = build_model(PARAMS.model, 10).eval()
    dim = PARAMS.model.latent_dim  # the flat latent (latent_resolution only shapes it into a map)
    prior = DiffusionPrior(
        build_denoiser(cfg.denoiser, model.latent_shape, 10, cfg.width, cfg.blocks).eval(),
        GaussianDiffusion(cfg.timesteps, cfg.prediction),
        torch.zeros(dim),
        torch.ones(dim),
    )
    sampler = prior.sampler(sample.steps, sample.guidance, sample.solver)
    out = {}
    for p in precisions:
        # emulated bf16 (no native support) is measured on fewer images: its rate is what matters
        per_class = (samples if p == FP32 or native_bf16(CPU) else min(samples, EMULATED_SAMPLES)) // 10
        start = time.perf_counter()
        generate(
            model, 10, per_class, seed=0, batch_size=sample.batch_size, progress=False, latents=sampler, precision=p
        )
        out[p.name] = per_class * 10 / (time.perf_counter() - start)
    return out


# --- FID features --------------------------------------------------------------------------------------------
def inception_gflop_per_image() -> float:
    from torch.utils.flop_counter import FlopCounterMode

    from cvae_pipeline.metrics.inception import load_inception

    network = load_inception(optimize=False)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        network(torch.zeros(1, 3, 299, 299))
    return counter.get_total_flops() / 1e9


def write_pngs(images: np.ndarray, folder: Path) -> Path:
    from PIL import Image

    folder.mkdir(parents=True)
    for i, img in enumerate(images):
        Image.fromarray(img.transpose(1, 2, 0)).save(folder / f"{i:05d}.png")
    return folder


def project_features(folder: Path, engine: str) -> tuple[np.ndarray, float]:
    """Features of the PNGs in ``folder`` by the extractor ``evaluate.engine: <engine>`` runs, and the seconds
    they took, reading the PNGs included; the extractor's set-up and first call are not timed."""
    from cvae_pipeline.metrics.image_sets import read_folder
    from cvae_pipeline.metrics.inception import InceptionFeatures

    extractor = InceptionFeatures(CPU, batch_size=50, engine=engine)
    extractor(np.zeros((2, 3, 32, 32), np.uint8), progress=False)  # warm-up (first-call JIT profiling)
    start = time.perf_counter()
    features = extractor(read_folder(folder), progress=False)
    return features, time.perf_counter() - start


def pytorch_fid_features(folder: Path) -> tuple[np.ndarray, float]:
    """pytorch-fid 0.3.0's features exactly as ``python -m pytorch_fid`` computes them (``num_workers=0``),
    its weights written offline from the same network (``tests/pytorch_fid_weights.py``)."""
    sys.path.insert(0, str(REPO / "tests"))
    from pytorch_fid.fid_score import IMAGE_EXTENSIONS, get_activations
    from pytorch_fid.inception import InceptionV3
    from pytorch_fid_weights import install_pytorch_fid_weights

    install_pytorch_fid_weights()
    model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    with torch.no_grad():
        model(torch.zeros(2, 3, 32, 32))  # warm-up
    start = time.perf_counter()
    files = sorted(p for ext in IMAGE_EXTENSIONS for p in folder.glob(f"*.{ext}"))
    features = get_activations(files, model, batch_size=50, dims=2048, device=CPU, num_workers=0)
    return features, time.perf_counter() - start


def fid_rows(count: int) -> dict:
    import tempfile

    from torch.fx.experimental.optimization import fuse

    from cvae_pipeline.data.prepared import load_prepared
    from cvae_pipeline.metrics.image_sets import read_folder
    from cvae_pipeline.metrics.inception import load_inception, preprocess

    images = np.asarray(load_prepared(REPO / "data" / "prepared", "test").images[:count])
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_pngs(images, Path(tmp) / "A")
        os.environ["TORCH_HOME"] = str(Path(tmp) / "torch_home")
        reference, seconds = pytorch_fid_features(folder)
        rows["pytorch-fid 0.3.0"] = {"images_per_second": count / seconds, "features": reference}

        def shipped(engine: str) -> dict:
            """The extractor ``evaluate`` runs with ``evaluate.engine: <engine>``, reading the PNGs like
            pytorch-fid; its set-up (the network from the cache, converted once if not there) timed apart."""
            started = time.perf_counter()
            features, seconds = project_features(folder, engine)
            setup = time.perf_counter() - started - seconds
            return {"images_per_second": count / seconds, "features": features, "setup_seconds": setup}

        rows["project, torch (traced, frozen, channels-last)"] = shipped("torch")

        def batched(forward) -> tuple[np.ndarray, float]:
            """Features by ``forward`` timed like the project's row: reading the PNGs included."""
            start = time.perf_counter()
            read = torch.from_numpy(read_folder(folder))
            chunks = []
            for i in range(0, count, 50):
                x = preprocess(read[i : i + 50]).contiguous(memory_format=torch.channels_last)
                chunks.append(np.asarray(forward(x), np.float64))
            return np.concatenate(chunks), time.perf_counter() - start

        network = load_inception(optimize=False).eval()
        fused = fuse(network).to(memory_format=torch.channels_last)
        started = time.perf_counter()
        compiled = torch.compile(fused)
        with torch.inference_mode():
            compiled(preprocess(torch.from_numpy(images[:50])).contiguous(memory_format=torch.channels_last))
            compile_seconds = time.perf_counter() - started
            features, seconds = batched(compiled)
        rows["torch.compile (inductor) of the fused network"] = {
            "images_per_second": count / seconds,
            "features": features,
            "setup_seconds": compile_seconds,
        }
        from cvae_pipeline.metrics import inception_openvino

        if inception_openvino.available():
            import openvino as ov

            name = f"project, OpenVINO {ov.__version__.split('-')[0]} f32 (evaluate.engine: auto)"
            rows[name] = shipped("openvino")
        else:
            rows["project, OpenVINO"] = {"error": "not installed (pip install openvino)"}
    for row in rows.values():
        if "features" in row:
            row["max_feature_difference"] = float(np.abs(row.pop("features") - reference).max())
    return rows


# --- a whole training experiment, before and after -----------------------------------------------------------
#: the ``-S`` settings of the "before" experiment: every stage in fp32, as the pipeline ran before the speed work
BEFORE = ("train.precision=fp32", "prior.precision=fp32", "sample.precision=fp32")


def experiment_rows(repo: Path, seed: int, log: Path) -> dict:
    """Wall seconds and results of ``dvc exp run -S train.seed=<seed>`` in ``repo``, first with :data:`BEFORE`
    ("before"), then at the defaults ("after"), each as a named experiment of ``repo``.

    ``dvc repro fid_reference`` first brings the stages upstream of ``train`` up to date (untimed: the data
    and the reference statistics are not part of a training experiment). Each experiment runs with
    ``--temp`` (a copy of the workspace, so the user's checkout is left as it was) and ``--force --downstream
    train``: ``train``, ``prior``, ``sample`` and ``evaluate`` really run even when DVC's run cache holds an
    earlier result of the same settings. DVC's output goes to ``log``."""
    bin_dir = str(Path(sys.executable).parent)  # the stages' `python` and `dvc`: this interpreter's
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rows: dict[str, dict] = {}
    with log.open("a") as out:

        def dvc(*args: str) -> tuple[bool, float]:
            out.write(f"\n$ dvc {' '.join(args)}\n")
            out.flush()
            started = time.perf_counter()
            done = subprocess.run(["dvc", *args], cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT)
            return done.returncode == 0, time.perf_counter() - started

        ok, seconds = dvc("repro", "fid_reference")
        if not ok:
            return {"error": f"dvc repro fid_reference failed; its output: {log}"}
        rows["setup: dvc repro fid_reference (untimed)"] = {"seconds": seconds}
        for label, settings in (("before", BEFORE), ("after", ())):
            name = f"speed-{label}-{stamp}"
            sets = [arg for setting in (f"train.seed={seed}", *settings) for arg in ("-S", setting)]
            # DVC checks out, into the copy, only the outputs upstream of the target (`train`); `evaluate` also
            # reads the reference statistics, so they are copied, with the lock `dvc repro` just wrote (the copy
            # starts from git's dvc.lock otherwise, which may not list them yet)
            copies = ("--copy-paths", "dvc.lock", "--copy-paths", "data/fid_reference")
            run = ("exp", "run", "--temp", *copies, "--force", "--downstream", "train", "-n", name)
            ok, seconds = dvc(*run, *sets)
            row = {"experiment": name, "settings": " ".join(sets), "seconds": seconds}
            if ok:
                row.update(experiment_results(repo, name))
            else:
                row["error"] = f"dvc exp run failed; its output: {log}"
            rows[label] = row
    return rows


def experiment_results(repo: Path, name: str) -> dict:
    """The stages' figures as the experiment ``name`` committed them (its git ref under ``refs/exps``)."""
    refs = subprocess.run(
        ["git", "for-each-ref", "--format=%(refname)", "refs/exps"], cwd=repo, capture_output=True, text=True
    ).stdout.split()
    ref = next((r for r in refs if r.endswith(f"/{name}")), None)
    if ref is None:
        return {"error": f"DVC reported success but holds no experiment named {name} (git refs/exps)"}

    def read(path: str) -> dict:
        shown = subprocess.run(["git", "show", f"{ref}:{path}"], cwd=repo, capture_output=True, text=True)
        return json.loads(shown.stdout) if shown.returncode == 0 else {}

    train, prior, evaluation = (
        read(f) for f in ("reports/train/metrics.json", "reports/prior/metrics.json", "reports/metrics.json")
    )
    if not (train and prior and evaluation):
        return {"error": f"experiment {name} lacks one of reports/{{train,prior}}/metrics.json, reports/metrics.json"}
    return {
        "train_seconds": train.get("train_seconds"),
        "train_images_per_second": train.get("images_per_second"),
        "prior_seconds": prior.get("prior_seconds"),
        "fid": evaluation.get("fid"),
        "num_samples": evaluation.get("num_samples"),
        "class_consistency": evaluation.get("class_consistency"),
    }


def print_experiment(rows: dict) -> None:
    if "error" in rows:
        print(f"  failed: {rows['error']}")
        return
    for name, row in rows.items():
        if name.startswith("setup"):
            print(f"  {name}: {row['seconds']:.0f} s")
            continue
        if "error" in row:
            print(f"  {name:6s} failed: {row['error']}")
            continue
        ratio = rows["before"]["seconds"] / row["seconds"] if "error" not in rows["before"] else float("nan")
        print(
            f"  {name:6s} {row['seconds'] / 60:5.1f} min  {ratio:4.2f}x before  train {row['train_seconds']:.0f} s "
            f"({row['train_images_per_second']:.0f} img/s), prior {row['prior_seconds']:.0f} s;  "
            f"FID-{row['num_samples'] // 1000}k {row['fid']:.2f}, class consistency {row['class_consistency']:.3f}  "
            f"(experiment {row['experiment']})",
            flush=True,
        )


# --- a queued sweep at -j 1 against -j 2 --------------------------------------------------------------------
STAGES = ("download", "prepare", "fid_reference", "train", "prior", "refine", "sample", "evaluate")


def queued_sweep(workers: int, guidances: list[str], settings: list[str]) -> dict:
    """Queue one experiment per guidance, run the queue with ``workers`` workers: wall seconds, stages run."""

    def dvc(*args: str) -> str:
        return subprocess.run(["dvc", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout

    names = [f"queue-j{workers}-{g}" for g in guidances]
    extra = [arg for setting in settings for arg in ("-S", setting)]
    for name, guidance in zip(names, guidances, strict=True):
        dvc("exp", "run", "--queue", "-n", name, "-S", f"sample.guidance={guidance}", *extra)
    start = time.perf_counter()
    dvc("queue", "start", "-j", str(workers))
    while any(word in dvc("queue", "status") for word in ("Queued", "Running")):
        time.sleep(2)
    seconds = time.perf_counter() - start
    status = dvc("queue", "status")
    ran = {}
    for name in names:
        log = dvc("queue", "logs", name) if name in status else ""
        ran[name] = [stage for stage in STAGES if f"Running stage '{stage}'" in log]
    failed = [line for line in status.splitlines() if "Failed" in line and any(n in line for n in names)]
    return {"workers": workers, "seconds": round(seconds, 1), "stages run": ran, "failed": failed}


def queue_rows(settings: list[str]) -> dict:
    """Two guidance values per worker count, other values for each, so DVC's run cache cannot stand in."""
    return {
        "settings": settings,
        "rows": [queued_sweep(1, ["1.5", "2.5"], settings), queued_sweep(2, ["2", "4"], settings)],
    }


# --- where a training step's time goes (--profile) -----------------------------------------------------------
#: operator name (aten::...) -> group; the first pattern that matches wins
PROFILE_GROUPS = (
    ("convolution backward", r"convolution_backward"),
    ("convolution forward", r"conv|convolution"),
    ("matmul (linear layers)", r"addmm|\bmm\b|bmm|linear|matmul"),
    ("normalisation", r"norm"),
    ("optimiser + EMA", r"adam|_foreach|lerp"),
    ("dtype casts and copies", r"_to_copy|\bto\b|copy_|clone|contiguous"),
)


def group_of(op: str) -> str:
    import re

    name = op.removeprefix("aten::")
    return next((g for g, pattern in PROFILE_GROUPS if re.search(pattern, name)), "everything else")


def profile_step(precision: Precision, steps: int) -> tuple[float, dict[str, float], list[tuple[str, float]]]:
    """(seconds per step, {group: self seconds per step}, [(op, self seconds per step)] by time)."""
    trainer, _ = warmed_trainer(precision, steps)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        started = time.perf_counter()
        trainer.train_epoch()
        wall = time.perf_counter() - started
    ops = [(e.key, e.self_cpu_time_total / 1e6 / steps) for e in prof.key_averages() if e.self_cpu_time_total > 0]
    ops.sort(key=lambda item: -item[1])
    groups: dict[str, float] = {}
    for op, seconds in ops:
        groups[group_of(op)] = groups.get(group_of(op), 0.0) + seconds
    return wall / steps, groups, ops


def print_profile(steps: int, top: int) -> None:
    runs = {"fp32": profile_step(FP32, steps)}
    if native_bf16(CPU):
        runs["bf16"] = profile_step(BF16, steps)
    else:
        print("no native bf16 on this CPU: profiling fp32 only")
    print(f"\nper training step (batch {PARAMS.train.batch_size}), self CPU time by group, {steps} steps profiled:")
    print(f"  {'group':<28}" + "".join(f"{name:>20}" for name in runs) + ("  bf16 speed-up" if "bf16" in runs else ""))
    fp32_groups = runs["fp32"][1]
    for group in sorted({g for _, groups, _ in runs.values() for g in groups}, key=lambda g: -fp32_groups.get(g, 0)):
        cells = "".join(
            f"{g.get(group, 0) * 1e3:>9.1f} ms {g.get(group, 0) / step:>6.1%}" for step, g, _ in runs.values()
        )
        if "bf16" in runs and runs["bf16"][1].get(group):
            cells += f"  {fp32_groups.get(group, 0.0) / runs['bf16'][1][group]:>10.2f}x"
        print(f"  {group:<28}{cells}")
    walls = "".join(f"{step * 1e3:>9.1f} ms {'':>7}" for step, _, _ in runs.values())
    speedup = f"  {runs['fp32'][0] / runs['bf16'][0]:>10.2f}x" if "bf16" in runs else ""
    print(f"  {'wall time per step (profiled)':<28}{walls}{speedup}")
    for name, (_, _, ops) in runs.items():
        print(f"\n{name}: the {top} operators with the most self CPU time per step")
        for op, seconds in ops[:top]:
            print(f"  {op:<44}{seconds * 1e3:>9.1f} ms  {group_of(op)}")


# --- printing each part ----------------------------------------------------------------------------------------
def print_trainer(rows: dict, steps: int) -> None:
    base = rows["fp32"].get("images_per_second")
    print(f"\ntrainer, default model, batch {PARAMS.train.batch_size}, {steps} steps per row:")
    for name, row in rows.items():
        if "error" in row:
            print(f"  {name:20s} failed: {row['error']}")
            continue
        extra = f", compiled in {row['compile_seconds']:.0f} s" if row["compile_seconds"] else ""
        print(
            f"  {name:20s} {row['images_per_second']:7.1f} img/s  {row['images_per_second'] / base:5.2f}x fp32  "
            f"peak RSS {row['peak_rss_mib']:6.0f} MiB{extra}",
            flush=True,
        )


def print_prior(rows: dict) -> None:
    cfg = PARAMS.prior
    base = rows[f"fp32, batch {cfg.batch_size}"]
    print(f"\nprior training step, {cfg.denoiser} denoiser {cfg.blocks}x{cfg.width}:")
    for name, rate in rows.items():
        print(f"  {name:20s} {rate:7.0f} latents/s  {rate / base:5.2f}x the default", flush=True)


def print_sample(rows: dict, samples: int) -> None:
    s = PARAMS.sample
    print(f"\nsampling {samples} images, {s.steps} {s.solver} steps at guidance {s.guidance:g}, decoded:")
    for name, rate in rows.items():
        print(
            f"  {name:20s} {rate:7.1f} img/s  {samples / rate:6.0f} s for {samples}  {rate / rows['fp32']:5.2f}x fp32"
        )


def print_fid(result: dict, count: int, fp32_gflops: float) -> None:
    gflop, rows = result["gflop_per_image"], result["rows"]
    base = rows["pytorch-fid 0.3.0"]["images_per_second"]
    print(f"\nFID features of {count} test images ({gflop:.2f} GFLOP per image at 299x299), batch 50:")
    for name, row in rows.items():
        if "error" in row:
            print(f"  {name:48s} {row['error']}")
            continue
        rate = row["images_per_second"]
        setup = f", setup {row['setup_seconds']:.0f} s" if "setup_seconds" in row else ""
        print(
            f"  {name:48s} {rate:6.2f} img/s  {rate / base:5.2f}x pytorch-fid  {rate * gflop:6.0f} GFLOP/s = "
            f"{100 * rate * gflop / fp32_gflops:3.0f} % of fp32 matmul  max |feature diff| "
            f"{row['max_feature_difference']:.1e}{setup}"
        )


def print_queue(result: dict) -> None:
    print(f"\na queued sample.guidance sweep, two experiments per row, each also {result['settings']}:")
    for row in result["rows"]:
        print(
            f"  -j {row['workers']}: {row['seconds'] / 60:.1f} min; stages run: {row['stages run']}; "
            f"failed: {row['failed']}"
        )
    print(f"  -j 2 / -j 1 wall time: {result['rows'][1]['seconds'] / result['rows'][0]['seconds']:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--steps", type=int, default=None, help="timed training steps per trainer row (12; --profile: 8)"
    )
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--fid-images", type=int, default=500)
    parser.add_argument("--skip", default="", help="parts to leave out, comma-separated: " + ",".join(PARTS))
    parser.add_argument("--seed", type=int, default=1, help="train.seed of the whole experiment, before and after")
    parser.add_argument("--experiment-log", type=Path, default=REPO / "benchmarks" / "results" / "speed-experiment.log")
    parser.add_argument(
        "--queue-set", nargs="*", default=["evaluate.likelihood_images=1000"], help="more -S, queue part"
    )
    parser.add_argument(
        "--emulated", action="store_true", help="also bf16 rows where the CPU only emulates bf16 (slow)"
    )
    parser.add_argument("--profile", action="store_true", help="profile the trainer's step instead (torch.profiler)")
    parser.add_argument("--top", type=int, default=12, help="--profile: operators listed per precision")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--row", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    steps = args.steps or (8 if args.profile else 12)
    skip = set(filter(None, args.skip.split(",")))
    if unknown := skip - set(PARTS):
        parser.error(f"--skip: unknown part(s) {sorted(unknown)}; the parts are {','.join(PARTS)}")
    if args.row:
        print(json.dumps(trainer_row(args.row[1], steps)))
        return 0
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True)
    commit = commit.stdout.strip() or "unknown"
    print(
        f"{cpu_description()}; torch {torch.__version__}; native bf16: {native_bf16(CPU)}; commit {commit}", flush=True
    )
    if args.profile:
        print_profile(steps, args.top)
        return 0
    result: dict = {"commit": commit, "machine": cpu_description(), "native_bf16": native_bf16(CPU)}
    fp32 = matmul_gflops(torch.float32)
    bf16 = matmul_gflops(torch.bfloat16, 2048 if native_bf16(CPU) else 512)  # emulated: minutes at 2048
    result["matmul_gflops"] = {"fp32": fp32, "bf16": bf16}
    print(f"matmul: fp32 {fp32:.1f} GFLOP/s, bf16 {bf16:.1f} GFLOP/s ({bf16 / fp32:.3f}x)", flush=True)
    with_bf16 = native_bf16(CPU) or args.emulated
    if not with_bf16:
        print("no native bf16: its rows are left out (--emulated measures torch's emulation)", flush=True)
    precisions = (FP32, BF16) if with_bf16 else (FP32,)
    names = [name for name, (p, _) in TRAINER_ROWS.items() if with_bf16 or p.dtype == "fp32"]
    parts = {  # name: (measure, print)
        "trainer": (
            lambda: {name: run_row_in_subprocess("trainer", name, steps) for name in names},
            lambda rows: print_trainer(rows, steps),
        ),
        "prior": (lambda: prior_rows(precisions), print_prior),
        "sample": (lambda: sample_rows(args.samples, precisions), lambda rows: print_sample(rows, args.samples)),
        "fid": (
            lambda: {"gflop_per_image": inception_gflop_per_image(), "rows": fid_rows(args.fid_images)},
            lambda rows: print_fid(rows, args.fid_images, fp32),
        ),
        "experiment": (lambda: experiment_rows(REPO, args.seed, args.experiment_log), print_experiment),
        "queue": (lambda: queue_rows(args.queue_set), print_queue),
    }
    for name, (measure, show) in parts.items():
        if name in skip:
            continue
        if name == "experiment":
            print(
                f"\nwhole training experiment before ({' '.join(BEFORE)}) and after; "
                f"DVC's output: {args.experiment_log}"
            )
        result[name] = measure()
        show(result[name])
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


PARTS = ("trainer", "prior", "sample", "fid", "experiment", "queue")

if __name__ == "__main__":
    sys.exit(main())
