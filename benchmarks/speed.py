"""How fast each heavy part runs on this CPU, and how close it gets to the machine's limit — in one run.

    python benchmarks/speed.py [--steps 12] [--samples 10000] [--fid-images 500] [--seed 1] [--skip trainer,...]

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
  them out.

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
def warmed_trainer(precision: Precision, steps: int, variant: str = ""):
    """A ``Trainer`` of the default model (seed 0) over the first ``steps`` batches of the training split,
    at ``precision``, after a warm-up epoch of two batches on the same model (oneDNN's kernel choice; for
    ``variant="compile"`` the compilation itself); ``variant="before"``: the per-tensor AdamW and EMA the
    loop used before the speed work. Returns the trainer and the seconds its set-up and warm-up took."""
    from torch.optim.swa_utils import AveragedModel

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
    fused = variant != "before"
    trainer = Trainer(
        model, cfg, CPU, subset(cfg.batch_size * steps), warm, Path("/nonexistent"), "bench", fused_optimizer=fused
    )
    if variant == "before":  # the per-tensor EMA update the loop used before
        decay = cfg.ema_decay

        def per_tensor(averaged, current, num):
            d = min(decay, (1.0 + float(num)) / (10.0 + float(num)))
            return averaged * d + current * (1.0 - d)

        trainer.ema = AveragedModel(trainer.model, avg_fn=per_tensor, use_buffers=True)
    trainer.use_precision(precision)
    warm_up = Trainer(model, cfg, CPU, warm, warm, Path("/nonexistent"), "bench", fused_optimizer=fused)
    warm_up.use_precision(precision)
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


def fid_rows(count: int) -> dict:
    import tempfile

    sys.path.insert(0, str(REPO / "benchmarks"))
    from fid_throughput import project_features, pytorch_fid_features, write_pngs
    from torch.fx.experimental.optimization import fuse

    from cvae_pipeline.data.prepared import load_prepared
    from cvae_pipeline.metrics.image_sets import read_folder
    from cvae_pipeline.metrics.inception import load_inception, preprocess
    from cvae_pipeline.metrics.pytorch_fid_weights import install_pytorch_fid_weights

    images = np.asarray(load_prepared(REPO / "data" / "prepared", "test").images[:count])
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_pngs(images, Path(tmp) / "A")
        os.environ["TORCH_HOME"] = str(Path(tmp) / "torch_home")
        install_pytorch_fid_weights()
        (reference,), seconds = pytorch_fid_features([folder], CPU)
        rows["pytorch-fid 0.3.0"] = {"images_per_second": count / seconds, "features": reference}

        def shipped(engine: str) -> dict:
            """The extractor ``evaluate`` runs with ``evaluate.engine: <engine>``, reading the PNGs like
            pytorch-fid; its set-up (the network from the cache, converted once if not there) timed apart."""
            started = time.perf_counter()
            (features,), seconds = project_features([folder], CPU, engine)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12, help="timed training steps per trainer row")
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--fid-images", type=int, default=500)
    parser.add_argument(
        "--skip", default="", help="comma-separated parts to leave out: trainer,prior,sample,fid,experiment"
    )
    parser.add_argument("--seed", type=int, default=1, help="train.seed of the whole experiment, before and after")
    parser.add_argument(
        "--experiment-log",
        type=Path,
        default=REPO / "benchmarks" / "results" / "speed-experiment.log",
        help="where DVC's output of the whole experiments goes",
    )
    parser.add_argument(
        "--emulated", action="store_true", help="also the bf16 rows on a CPU without native bf16 (very slow)"
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument("--row", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.row:
        print(json.dumps(trainer_row(args.row[1], args.steps)))
        return 0
    skip = set(filter(None, args.skip.split(",")))
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True)
    commit = commit.stdout.strip() or "unknown"
    print(
        f"{cpu_description()}; torch {torch.__version__}; native bf16: {native_bf16(CPU)}; commit {commit}", flush=True
    )
    result: dict = {"commit": commit, "machine": cpu_description(), "native_bf16": native_bf16(CPU)}
    fp32 = matmul_gflops(torch.float32)
    bf16 = matmul_gflops(torch.bfloat16, 2048 if native_bf16(CPU) else 512)  # emulated: minutes at 2048
    result["matmul_gflops"] = {"fp32": fp32, "bf16": bf16}
    print(f"matmul: fp32 {fp32:.1f} GFLOP/s, bf16 {bf16:.1f} GFLOP/s ({bf16 / fp32:.3f}x)", flush=True)
    with_bf16 = native_bf16(CPU) or args.emulated
    if not with_bf16:
        print("no native bf16: its rows are left out (--emulated measures torch's emulation)", flush=True)
    precisions = (FP32, BF16) if with_bf16 else (FP32,)

    if "trainer" not in skip:
        names = [name for name, (p, _) in TRAINER_ROWS.items() if with_bf16 or p.dtype == "fp32"]
        rows = {name: run_row_in_subprocess("trainer", name, args.steps) for name in names}
        result["trainer"] = rows
        base = rows["fp32"].get("images_per_second")
        print(f"\ntrainer, default model, batch {PARAMS.train.batch_size}, {args.steps} steps per row:")
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
    if "prior" not in skip:
        rows = prior_rows(precisions)
        result["prior"] = rows
        base = rows[f"fp32, batch {PARAMS.prior.batch_size}"]
        prior_cfg = PARAMS.prior
        print(f"\nprior training step, {prior_cfg.denoiser} denoiser {prior_cfg.blocks}x{prior_cfg.width}:")
        for name, rate in rows.items():
            print(f"  {name:20s} {rate:7.0f} latents/s  {rate / base:5.2f}x the default", flush=True)
    if "sample" not in skip:
        rows = sample_rows(args.samples, precisions)
        result["sample"] = rows
        s = PARAMS.sample
        print(f"\nsampling {args.samples} images, {s.steps} {s.solver} steps at guidance {s.guidance:g}, decoded:")
        for name, rate in rows.items():
            print(
                f"  {name:20s} {rate:7.1f} img/s  {args.samples / rate:6.0f} s for {args.samples}  "
                f"{rate / rows['fp32']:5.2f}x fp32",
                flush=True,
            )
    if "fid" not in skip:
        gflop = inception_gflop_per_image()
        rows = fid_rows(args.fid_images)
        result["fid"] = {"gflop_per_image": gflop, "rows": rows}
        base = rows["pytorch-fid 0.3.0"]["images_per_second"]
        print(f"\nFID features of {args.fid_images} test images ({gflop:.2f} GFLOP per image at 299x299), batch 50:")
        for name, row in rows.items():
            if "error" in row:
                print(f"  {name:48s} {row['error']}")
                continue
            rate = row["images_per_second"]
            setup = f", setup {row['setup_seconds']:.0f} s" if "setup_seconds" in row else ""
            print(
                f"  {name:48s} {rate:6.2f} img/s  {rate / base:5.2f}x pytorch-fid  {rate * gflop:6.0f} GFLOP/s = "
                f"{100 * rate * gflop / fp32:3.0f} % of fp32 matmul  max |feature diff| "
                f"{row['max_feature_difference']:.1e}{setup}",
                flush=True,
            )
    if "experiment" not in skip:
        print(
            f"\nwhole training experiment, dvc exp run -S train.seed={args.seed} (train, prior, sample, evaluate), "
            f"before ({' '.join(BEFORE)}) and after (the defaults); DVC's output: {args.experiment_log} ...",
            flush=True,
        )
        rows = experiment_rows(REPO, args.seed, args.experiment_log)
        result["experiment"] = rows
        print_experiment(rows)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
