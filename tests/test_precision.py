"""The compute precision: the decision (``auto`` takes bf16 only on native hardware and only when the probe
measures it faster), its probe leaving training untouched, bf16 training with fp32 weights and sums, and
a resumed run keeping its checkpoint's choice."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, make_prepared, model_params, train_params

from cvae_pipeline import precision as precision_module
from cvae_pipeline.data.prepared import load_prepared
from cvae_pipeline.models import build_model
from cvae_pipeline.precision import BF16, BF16_CHANNELS_LAST, FP32, MIN_GAIN, Precision, choose, resolve
from cvae_pipeline.training import distributed
from cvae_pipeline.training.loop import Trainer
from cvae_pipeline.training.pipeline import training_precision

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return make_prepared(tmp_path_factory.mktemp("data") / "prepared", train_per_class=12)


def make_trainer(prepared, tmp_path, backbone="conv", **train) -> Trainer:
    cfg = train_params(**{"epochs": 1, "batch_size": 40, "seed": 3, "warmup_epochs": 0, **train})
    torch.manual_seed(cfg.seed)
    model = build_model(model_params(backbone=backbone, width=8, latent_dim=8, latent_resolution=1), 10)
    split = load_prepared(prepared, "train")
    return Trainer(model, cfg, CPU, split, load_prepared(prepared, "val"), tmp_path / "ckpt.pt", "test")


def test_the_decision_table():
    assert choose("fp32", True, None).precision == FP32
    assert choose("auto", False, None).precision == FP32
    assert "no native bf16" in choose("auto", False, None).why
    fast = {FP32: 1.0, BF16: 0.45, BF16_CHANNELS_LAST: 0.7}
    assert choose("auto", True, fast).precision == BF16
    assert "2.22x" in choose("auto", True, fast).why
    layout = {FP32: 1.0, BF16: 0.8, BF16_CHANNELS_LAST: 0.5}
    assert choose("auto", True, layout).precision == BF16_CHANNELS_LAST
    marginal = {FP32: 1.0, BF16: 1.0 / (MIN_GAIN - 0.05), BF16_CHANNELS_LAST: 2.0}
    assert choose("auto", True, marginal).precision == FP32  # a gain inside the probe's noise keeps fp32
    slower = {FP32: 1.0, BF16: 3.0, BF16_CHANNELS_LAST: 4.0}
    assert choose("auto", True, slower).precision == FP32
    emulated = choose("bf16", False, None)
    assert emulated.precision == BF16 and "emulated" in emulated.why  # asked for: honoured, and said so
    assert choose("bf16", True, {BF16: 0.9, BF16_CHANNELS_LAST: 0.5}).precision == BF16_CHANNELS_LAST
    with pytest.raises(ValueError):
        choose("fp16", True, None)


def test_names_round_trip():
    for p in (FP32, BF16, BF16_CHANNELS_LAST, Precision("fp32", True)):
        assert Precision.parse(p.name) == p
    with pytest.raises(ValueError):
        Precision.parse("fp16")


def test_a_cpu_forced_below_avx512_never_probes_and_trains_fp32():
    """ATEN_CPU_CAPABILITY=avx2 is how a user (or this test, on an AMX machine) turns native bf16 off:
    auto then resolves to fp32 without running the probe."""
    code = (
        "import torch\n"
        "from cvae_pipeline.precision import native_bf16, resolve\n"
        "def probe(p): raise AssertionError('probed')\n"
        "c = resolve('auto', torch.device('cpu'), probe)\n"
        "print(torch.backends.cpu.get_cpu_capability(), native_bf16(torch.device('cpu')), c.precision.name)\n"
    )
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "PYTHONPATH": str(REPO / "src")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["AVX2", "False", "fp32"]


def test_auto_on_native_bf16_probes_every_candidate_and_takes_the_fastest(prepared, tmp_path, monkeypatch):
    """The probe path, run for real: native bf16 is forced on (where the CPU lacks it, bf16 is emulated);
    the choice is the fastest measured candidate. Which one that is, is timing: not asserted here (a loaded
    machine can make a tiny model's emulated bf16 look fast); benchmarks/speed.py measures it."""
    monkeypatch.setattr(precision_module, "native_bf16", lambda device: True)
    trainer = make_trainer(prepared, tmp_path)
    measured: dict[Precision, float] = {}

    def probe(p: Precision) -> float:
        measured[p] = trainer.seconds_per_step(p)
        return measured[p]

    choice = resolve("auto", CPU, probe)
    assert set(measured) == {FP32, BF16, BF16_CHANNELS_LAST}
    assert choice == choose("auto", True, measured)


def test_the_probe_changes_nothing_the_training_draws_or_learns(prepared, tmp_path, monkeypatch):
    monkeypatch.setattr(precision_module, "native_bf16", lambda device: True)
    plain = make_trainer(prepared, tmp_path / "a")
    plain.train_epoch()
    probed = make_trainer(prepared, tmp_path / "b")
    choice = training_precision(probed, distributed.Distributed())
    probed.use_precision(FP32)  # same arithmetic as the plain run, whatever the probe chose
    probed.train_epoch()
    assert choice.why.startswith("auto: ")
    for a, b in zip(plain.model.parameters(), probed.model.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("chosen", [BF16, BF16_CHANNELS_LAST])
def test_bf16_trains_with_fp32_weights_and_fp32_loss_sums(prepared, tmp_path, chosen):
    trainer = make_trainer(prepared, tmp_path)
    trainer.use_precision(chosen)
    x, y = trainer.probe_batch
    with chosen.autocast(CPU):
        terms = trainer.model.loss(chosen.batch(x), y)
    assert terms.loss.dtype == terms.nll.dtype == terms.kl.dtype == torch.float32
    record = trainer.train_epoch() | trainer.validate()
    assert all(torch.isfinite(torch.tensor(v)) for v in record.values())
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert all(p.dtype == torch.float32 for p in trainer.eval_model.parameters())


def test_bf16_stays_close_to_fp32_on_the_same_batch(prepared, tmp_path):
    """bf16 changes the arithmetic, not the model: the ELBO of one batch agrees to ~1 %."""
    trainer = make_trainer(prepared, tmp_path)
    x, y = trainer.probe_batch
    values = {}
    for p in (FP32, BF16):
        torch.manual_seed(0)
        with torch.no_grad(), p.autocast(CPU):
            values[p] = trainer.model.loss(x, y).neg_elbo.item()
    assert values[BF16] == pytest.approx(values[FP32], rel=0.01)


def test_a_resumed_run_keeps_its_checkpoints_choice(prepared, tmp_path):
    trainer = make_trainer(prepared, tmp_path, precision="auto")
    trainer.extra["precision"] = BF16_CHANNELS_LAST.name
    choice = training_precision(trainer, distributed.Distributed())
    assert choice.precision == BF16_CHANNELS_LAST and "checkpoint" in choice.why


def test_sampling_precision_probes_the_real_draw_and_bf16_samples_stay_close(monkeypatch):
    from cvae_pipeline.sampling import generate, sampling_precision

    torch.manual_seed(0)
    model = build_model(model_params(backbone="conv", width=8, latent_dim=8, latent_resolution=1), 10).eval()
    if not precision_module.native_bf16(CPU):
        assert sampling_precision(model, "auto", None).why == "auto: no native bf16 on this device"
    monkeypatch.setattr(precision_module, "native_bf16", lambda device: True)
    probed = sampling_precision(model, "auto", None)
    assert probed.why.startswith("auto: ") and "steps/s" in probed.why
    fp32, _ = generate(model, 10, 3, seed=1, progress=False)
    bf16, _ = generate(model, 10, 3, seed=1, progress=False, precision=BF16)
    assert not np.array_equal(fp32, bf16)
    assert np.abs(fp32.astype(int) - bf16.astype(int)).mean() < 3  # grey levels: bf16 rounding, not another image
