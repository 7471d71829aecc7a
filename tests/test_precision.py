"""The compute precision: the decision (``auto`` is bf16 exactly where the hardware has it natively, never
a timing probe's verdict), bf16 training with fp32 weights and sums, and a resumed run keeping its
checkpoint's choice."""

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
from cvae_pipeline.precision import BF16, BF16_CHANNELS_LAST, FP32, Precision, resolve
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


@pytest.mark.parametrize("native", [True, False])
def test_the_decision_table(monkeypatch, native):
    monkeypatch.setattr(precision_module, "native_bf16", lambda device: native)
    assert resolve("fp32", CPU).precision == FP32
    auto = resolve("auto", CPU)
    assert auto.precision == (BF16 if native else FP32)
    assert auto.why == ("auto: native bf16 on this device" if native else "auto: no native bf16 on this device")
    asked = resolve("bf16", CPU)
    assert asked.precision == BF16 and ("emulated" in asked.why) != native  # asked for: honoured, and said so
    with pytest.raises(ValueError):
        resolve("fp16", CPU)


def test_auto_is_a_function_of_the_machine_never_of_a_timing(prepared, tmp_path, monkeypatch):
    """The same params on the same machine must give the same precision, so the same weights: nothing is
    timed to decide (a timing can differ from one run to the next), in training, the prior or sampling."""

    def timed(*args, **kwargs):
        raise AssertionError("a timing decided the precision")

    monkeypatch.setattr(precision_module, "native_bf16", lambda device: True)
    monkeypatch.setattr(precision_module, "seconds_per_step", timed)
    monkeypatch.setattr(Trainer, "seconds_per_step", timed)
    choices = {
        training_precision(make_trainer(prepared, tmp_path / str(i)), distributed.Distributed()) for i in range(3)
    }
    assert choices == {resolve("auto", CPU)} and next(iter(choices)).precision == BF16


def test_names_round_trip():
    for p in (FP32, BF16, BF16_CHANNELS_LAST, Precision("fp32", True)):
        assert Precision.parse(p.name) == p
    with pytest.raises(ValueError):
        Precision.parse("fp16")


def test_a_cpu_forced_below_avx512_trains_fp32():
    """ATEN_CPU_CAPABILITY=avx2 is how a user (or this test, on an AMX machine) turns native bf16 off:
    auto then resolves to fp32."""
    code = (
        "import torch\n"
        "from cvae_pipeline.precision import native_bf16, resolve\n"
        "c = resolve('auto', torch.device('cpu'))\n"
        "print(torch.backends.cpu.get_cpu_capability(), native_bf16(torch.device('cpu')), c.precision.name)\n"
    )
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "PYTHONPATH": str(REPO / "src")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["AVX2", "False", "fp32"]


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


def test_bf16_samples_stay_close_to_fp32():
    from cvae_pipeline.sampling import generate

    torch.manual_seed(0)
    model = build_model(model_params(backbone="conv", width=8, latent_dim=8, latent_resolution=1), 10).eval()
    fp32, _ = generate(model, 10, 3, seed=1, progress=False)
    bf16, _ = generate(model, 10, 3, seed=1, progress=False, precision=BF16)
    assert not np.array_equal(fp32, bf16)
    assert np.abs(fp32.astype(int) - bf16.astype(int)).mean() < 3  # grey levels: bf16 rounding, not another image
