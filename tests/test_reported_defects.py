"""Defects a review found by trying bad input by hand: each stays fixed.

Stage scripts run as DVC runs them (a subprocess in a workspace), so "one line" means the whole of
what a user sees on stderr."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, TINY_MODEL, make_prepared, run_stage, train_workspace

from cvae_pipeline import io as atomic_io
from cvae_pipeline.errors import ConfigError, PipelineError
from cvae_pipeline.samples import SampleSet


def params_workspace(root: Path, **sections) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for name, values in sections.items():
        params[name].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# --- atomic outputs --------------------------------------------------------------------------------


@pytest.mark.parametrize("dies", ["before", "after"])
def test_a_death_at_the_atomic_exchange_leaves_old_or_new(tmp_path, monkeypatch, dies):
    """The fault reaches ``renameat2(RENAME_EXCHANGE)`` itself: the process dies just before or just after
    the real exchange of the new output with the old (and the test checks that the exchange really ran
    here: a system without it would test the rename-aside path below instead)."""
    target = tmp_path / "out"
    with atomic_io.atomic_directory(target) as tmp:
        (tmp / "old").write_text("old")
    real, exchanged = atomic_io._exchange, []

    def exchange_then_die(a, b):
        if dies == "after":
            exchanged.append(real(a, b))
        raise KeyboardInterrupt  # the process is gone here

    monkeypatch.setattr(atomic_io, "_exchange", exchange_then_die)
    with pytest.raises(KeyboardInterrupt):
        with atomic_io.atomic_directory(target) as tmp:
            (tmp / "new").write_text("new")
    if dies == "after":
        assert exchanged == [True], "renameat2 did not exchange here; the test would not reach it"
    monkeypatch.setattr(atomic_io, "_exchange", real)
    atomic_io.recover_directory(target)  # what the next write of this output does first
    assert sorted(p.name for p in target.iterdir()) == (["new"] if dies == "after" else ["old"])
    with atomic_io.atomic_directory(target) as tmp:  # and the next write cleans up and succeeds
        (tmp / "next").write_text("next")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (target / "next").is_file()


@pytest.mark.parametrize("dies_in", ["os.replace", "shutil.rmtree"])
def test_replacing_a_directory_without_the_exchange_leaves_old_or_new_whenever_it_stops(tmp_path, monkeypatch, dies_in):
    """Where the system has no atomic exchange: a kill between "rename the old output aside" and "rename the
    new one into place" (or during the old one's deletion) leaves old or new, never neither."""
    target = tmp_path / "out"
    with atomic_io.atomic_directory(target) as tmp:
        (tmp / "old").write_text("old")
    monkeypatch.setattr(atomic_io, "_exchange", lambda a, b: False)
    module_name, name = dies_in.split(".")
    module = {"os": os, "shutil": shutil}[module_name]
    real = getattr(module, name)

    def dies(path, *args, **kwargs):
        if Path(path) in (target, tmp_path / ".out.old") or Path(args[0] if args else "") == target:
            raise KeyboardInterrupt  # the process is gone here
        return real(path, *args, **kwargs)

    monkeypatch.setattr(module, name, dies)
    with pytest.raises(KeyboardInterrupt):
        with atomic_io.atomic_directory(target) as tmp:
            (tmp / "new").write_text("new")
    monkeypatch.setattr(module, name, real)
    atomic_io.recover_directory(target)
    assert sorted(p.name for p in target.iterdir()) in (["old"], ["new"])


def test_a_writer_leaves_another_live_writers_temporary_file_alone(tmp_path):
    """Parallel ``evaluate``s fill the one FID-network cache: a writer clears the litter of dead writers,
    never the temporary file another process is still writing."""
    target = tmp_path / "weights.bin"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        writing = tmp_path / f".weights.bin.tmp-{live.pid}-abc"
        litter = tmp_path / f".weights.bin.tmp-{dead.stdout.strip()}-def"
        old_style = tmp_path / ".weights.bin.tmp-xyz"  # named by an older version: no writer to ask
        for path in (writing, litter, old_style):
            path.write_text("partial")
        with atomic_io.atomic_file(target) as tmp:
            tmp.write_text("whole")
        assert writing.exists() and not litter.exists() and not old_style.exists()
        assert target.read_text() == "whole"
    finally:
        live.kill()
        live.wait()


def test_too_few_latents_for_the_gmm_is_one_line_naming_the_knob():
    from cvae_pipeline.prior.gmm import ClassGMM

    latents, labels = np.zeros((6, 4), np.float32), np.repeat(np.arange(3), 2)
    with pytest.raises(PipelineError, match=r"class 0 has 2 encoded images, fewer than prior.gmm_components=3"):
        ClassGMM.fit(latents, labels, 3, components=3)


def test_queued_stages_take_the_cores_in_turns(tmp_path):
    """Two stage processes of queued experiments (their workspaces under .dvc/tmp/exps/) run one after the
    other, each with every core, instead of both at once; with OMP_NUM_THREADS set they overlap."""
    code = (
        "import time, sys\n"
        "from cvae_pipeline.stage import run_stage\n"
        "def main():\n"
        "    start = time.time(); time.sleep(1.5); print(start, time.time())\n"
        "run_stage(main)\n"
    )

    def two_at_once(env_extra: dict) -> list[tuple[float, float]]:
        procs = []
        for name in ("tmpa", "tmpb"):
            ws = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / name
            ws.mkdir(parents=True, exist_ok=True)
            env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"} | {"PYTHONPATH": str(REPO / "src")}
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", code], cwd=ws, env=env | env_extra, stdout=subprocess.PIPE, text=True
                )
            )
        return sorted(tuple(map(float, p.communicate(timeout=60)[0].split()[-2:])) for p in procs)

    (start_a, end_a), (start_b, _) = two_at_once({})
    assert start_b >= end_a, "two queued stages ran at once"
    (start_a, end_a), (start_b, _) = two_at_once({"OMP_NUM_THREADS": "1"})
    assert start_b < end_a, "stages whose threads are already divided waited for each other"


# --- devices ---------------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("key", ["evaluate.device", "train.device", "--device"])
def test_device_error_names_the_setting_that_asked(key):
    from cvae_pipeline.runtime import resolve_device

    with pytest.raises(ConfigError, match=rf"^{key} = 'cuda' but no CUDA device"):
        resolve_device("cuda", key)


# --- stages: inputs checked first, one line each --------------------------------------------------


def test_prepare_without_raw_data_is_one_line(tmp_path):
    ws = params_workspace(tmp_path / "ws")
    line = one_line_error(run_stage("prepare", ws))
    assert "data/raw" in line and "dvc repro" in line


def test_evaluate_without_samples_is_one_line(tmp_path):
    ws = params_workspace(tmp_path / "ws")
    line = one_line_error(run_stage("evaluate", ws))
    assert (
        line
        == "error: data/samples: no sample set (images.npy, labels.npy, classes.json missing); run `dvc repro sample`"
    )


def test_evaluate_without_reference_fails_before_the_inception_pass(tmp_path):
    ws = params_workspace(tmp_path / "ws")
    (ws / "data" / "samples").mkdir(parents=True)
    images = np.zeros((20, 3, 32, 32), np.uint8)
    SampleSet(images, np.arange(20) % 10, [f"c{i}" for i in range(10)]).save(ws / "data" / "samples")
    start = time.monotonic()
    result = run_stage("evaluate", ws)
    line = one_line_error(result)
    assert "data/fid_reference/features.npz: missing" in line
    assert "inception" not in result.stdout + result.stderr and time.monotonic() - start < 60


@pytest.fixture(scope="module")
def trained_workspace(tmp_path_factory) -> Path:
    """A workspace the train and refine stages have run in once (the damage tests copy it)."""
    ws = train_workspace(tmp_path_factory.mktemp("trained") / "ws", TINY_MODEL, {"epochs": 1, "batch_size": 64})
    assert run_stage("train", ws).returncode == 0
    assert run_stage("refine", ws).returncode == 0
    return ws


@pytest.mark.parametrize("damage", ["truncated", "garbled", "empty"])
def test_sample_with_a_damaged_model_is_one_line(tmp_path, trained_workspace, damage):
    ws = Path(shutil.copytree(trained_workspace, tmp_path / "ws"))
    model = ws / "models" / "refined.pt"  # the model file sample decodes with
    data = model.read_bytes()
    model.write_bytes(
        {"truncated": data[: len(data) // 2], "garbled": data[:100] + bytes(len(data) - 100), "empty": b""}[damage]
    )
    line = one_line_error(run_stage("sample", ws))
    assert (
        line.startswith("error: models/refined.pt: damaged or not the file expected here")
        and "dvc repro -f refine" in line
    )


def test_a_model_file_missing_a_param_names_it_instead_of_using_todays_default(tmp_path):
    from conftest import model_params

    from cvae_pipeline.models import build_model
    from cvae_pipeline.models.artifact import load_trained_model, save_trained_model

    params = model_params(**TINY_MODEL)
    saved = params.model_dump()
    del saved["gaussian_std"]
    save_trained_model(tmp_path / "model.pt", build_model(params, 10), saved, [f"c{i}" for i in range(10)])
    with pytest.raises(PipelineError, match="missing key 'gaussian_std'.*re-train it"):
        load_trained_model(tmp_path / "model.pt")


def test_errors_are_not_preceded_by_mlflow_warnings(tmp_path):
    """MLflow warned at import that the generator's predict has no type hints, before every error."""
    ws = params_workspace(tmp_path / "ws")
    for stage in ("train", "sample", "evaluate"):
        one_line_error(run_stage(stage, ws))


# --- training stops ----------------------------------------------------------------------------------


def make_trainer(tmp_path: Path, **train):
    """test_training's trainer on a tiny prepared set, two epochs."""
    from test_training import make_trainer as trainer_on

    prepared = make_prepared(tmp_path / "prepared", 4, 2, 1)
    return trainer_on(prepared, tmp_path / "ckpt.pt", **{"epochs": 2, "batch_size": 16, **train})


def test_nan_stop_before_any_checkpoint_does_not_claim_another_configurations_file(tmp_path):
    from cvae_pipeline.training.checkpoint import save_checkpoint
    from cvae_pipeline.training.loop import TrainingError

    trainer = make_trainer(tmp_path)
    save_checkpoint(trainer.checkpoint_path, {"fingerprint": "another configuration"})
    assert not trainer.try_resume()
    original = trainer.model.loss

    def nan_loss(x, y, **kw):
        terms = original(x, y, **kw)
        terms.loss = terms.loss * float("nan")
        return terms

    trainer.model.loss = nan_loss
    with pytest.raises(TrainingError) as info:
        trainer.fit()
    assert "no checkpoint of this configuration was written" in str(info.value)
    assert "is kept" not in str(info.value).replace("nothing is kept", "")


def test_a_finite_but_diverged_loss_stops_training(tmp_path):
    from cvae_pipeline.training.loop import TrainingError

    trainer = make_trainer(tmp_path)
    original = trainer.model.loss

    def exploding(x, y, **kw):
        terms = original(x, y, **kw)
        terms.loss = terms.loss * 1e21  # finite: the NaN check passes it
        terms.nll = terms.nll * 1e21
        return terms

    trainer.model.loss = exploding
    with pytest.raises(TrainingError, match=r"training diverged at epoch 1: a loss of .*e\+2\d nats/image"):
        trainer.fit()
    assert not trainer.checkpoint_path.exists()


def test_history_names_the_weighted_objective_and_the_plain_bound_apart(tmp_path):
    trainer = make_trainer(tmp_path, beta=0.25, kl_warmup_epochs=0)
    (record, *_) = trainer.fit()
    assert {"train_objective", "train_neg_elbo", "val_neg_elbo"} <= set(record) and "val_loss" not in record
    assert record["train_objective"] == pytest.approx(record["train_nll"] + 0.25 * record["train_kl"], rel=1e-4)
    assert record["val_neg_elbo"] == pytest.approx(record["val_nll"] + record["val_kl"], rel=1e-4)


# --- tracking ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_resuming_an_untracked_interrupted_checkpoint_logs_its_history(tmp_path):
    """Training while the store was unreachable (mlflow.required false) and killed after a checkpoint, then
    re-run once the store is back: the resumed training's new run gets the untracked epochs' metrics too,
    not a curve that starts half-way."""
    import mlflow
    from conftest import clean_env, free_port, kill_at_first_checkpoint

    epochs = 4
    ws = train_workspace(
        tmp_path / "ws",
        {"backbone": "conv", "width": 16, "latent_dim": 16, "latent_resolution": 1},
        {"epochs": epochs, "batch_size": 32, "precision": "fp32"},
        train_per_class=60,
    )
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["mlflow"]["required"] = False
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    unreachable = clean_env(MLFLOW_TRACKING_URI=f"http://127.0.0.1:{free_port()}")
    trained_untracked = kill_at_first_checkpoint([sys.executable, str(REPO / "stages" / "train.py")], ws, unreachable)
    assert 1 <= trained_untracked < epochs, "the run finished before it could be killed; make it longer"
    back = run_stage("train", ws)
    assert back.returncode == 0, back.stderr
    assert f"logged the {trained_untracked} epochs the checkpoint trained untracked" in back.stdout
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{ws / 'mlflow.db'}")
    run_id = json.loads((ws / "models" / "mlflow_run.json").read_text())["run_id"]
    assert [m.step for m in client.get_metric_history(run_id, "val_neg_elbo")] == list(range(1, epochs + 1))


def test_run_file_holds_no_machine_path(tmp_path):
    ws = train_workspace(tmp_path / "ws", TINY_MODEL, {"epochs": 1, "batch_size": 64})
    assert run_stage("train", ws).returncode == 0
    text = (ws / "models" / "mlflow_run.json").read_text()
    assert str(tmp_path) not in text and set(json.loads(text)) == {"run_id", "experiment_id", "model_uri"}


def test_no_tracked_file_holds_an_absolute_path_of_a_machine():
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    offenders = []
    for name in files.decode().split("\0"):
        path = REPO / name
        if (
            not name
            or not path.is_file()
            or path.suffix in (".png", ".jpg", ".gz")
            or path.resolve() == Path(__file__).resolve()
        ):
            continue
        text = path.read_text(errors="ignore")
        for pattern in (str(REPO), "/root/", "/home/", "/work/", "/tmp/pytest", "file:///"):
            if pattern in text:
                offenders.append(f"{name}: {pattern}")
    assert not offenders, offenders


def test_unsupported_tracking_scheme_is_named_as_such(monkeypatch):
    from cvae_pipeline.tracking import TrackingError, configure_store

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "ftp://example.invalid/runs")
    with pytest.raises(TrackingError, match=r"uses the scheme 'ftp', which MLflow cannot track runs in") as info:
        configure_store()
    assert "not reachable" not in str(info.value)


def test_a_long_cause_is_cut_at_a_word_not_mid_word():
    from cvae_pipeline.errors import shorten

    text = "connection refused " * 30
    cut = shorten(text, 50)
    assert cut.endswith(" …") and cut[:-2] == cut[:-2].rstrip() and cut.split()[-2] in ("connection", "refused")


def test_the_sampled_generator_logs_no_param_conflict(tmp_path):
    """The generator's own settings (its serving defaults) must not become run params that clash with the
    pipeline's ("temperature" vs "sample.temperature")."""
    import mlflow

    ws = train_workspace(tmp_path / "ws", TINY_MODEL, {"epochs": 1, "batch_size": 64})
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["prior"]["kind"] = "none"
    params["sample"].update(per_class=3, latents="model", temperature=0.85)
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert run_stage("train", ws).returncode == 0
    assert run_stage("prior", ws).returncode == 0
    assert run_stage("refine", ws).returncode == 0
    sampled = run_stage("sample", ws)
    assert sampled.returncode == 0, sampled.stderr
    assert "Failed to log model config" not in sampled.stdout + sampled.stderr
    run_id = json.loads((ws / "reports" / "sample_run.json").read_text())["run_id"]
    run = mlflow.MlflowClient(tracking_uri=f"sqlite:///{ws / 'mlflow.db'}").get_run(run_id)
    assert "temperature" not in run.data.params and run.data.params["sample.temperature"] == "0.85"
    generator = json.loads((ws / "data" / "samples" / "generator.json").read_text())["model_uri"]
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{ws / 'mlflow.db'}")
    try:
        served = mlflow.pyfunc.load_model(generator)
    finally:
        mlflow.set_tracking_uri(previous)
    assert served.metadata.metadata["defaults"]["temperature"] == 0.85
