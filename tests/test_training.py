from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import (
    REPO,
    clean_env,
    kill_at_first_checkpoint,
    make_prepared,
    model_params,
    run_stage,
    train_params,
    train_workspace,
)

from cvae_pipeline.batches import BatchStream
from cvae_pipeline.data.prepared import load_prepared
from cvae_pipeline.models import build_model
from cvae_pipeline.training.loop import Trainer, TrainingError, ema_with_warmup
from cvae_pipeline.training.schedules import kl_weight, lr_factor


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return make_prepared(tmp_path_factory.mktemp("data") / "prepared", train_per_class=20)


def make_trainer(prepared: Path, ckpt: Path, backbone="mlp", **train) -> Trainer:
    cfg = train_params(
        **{"epochs": 3, "batch_size": 32, "lr": 2e-3, "seed": 7, "kl_warmup_epochs": 1.0, "warmup_epochs": 0.5, **train}
    )
    torch.manual_seed(cfg.seed)
    model = build_model(
        model_params(backbone=backbone, latent_dim=8, latent_resolution=1, width=32 if backbone == "mlp" else 8), 10
    )
    return Trainer(
        model,
        cfg,
        torch.device("cpu"),
        load_prepared(prepared, "train"),
        load_prepared(prepared, "val"),
        ckpt,
        fingerprint="test",
    )


def test_lr_schedule_warms_up_then_decays_to_zero():
    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(100, 100, 10, "cosine") == pytest.approx(0.0)
    assert lr_factor(80, 100, 10, "constant") == 1.0


def test_kl_weight_anneals_linearly_to_beta():
    assert kl_weight(0, 10, 2.0) == pytest.approx(0.2)
    assert kl_weight(4, 10, 2.0) == pytest.approx(1.0)
    assert kl_weight(50, 10, 2.0) == 2.0
    assert kl_weight(0, 0, 0.5) == 0.5


def test_ema_ramps_up_its_decay():
    update = ema_with_warmup(0.999)
    avg, cur = [torch.zeros(1), torch.zeros(1, dtype=torch.long)], [torch.ones(1), torch.full((1,), 7)]
    update(avg, cur, torch.tensor(0))
    assert avg[0].item() == pytest.approx(0.9) and avg[1].item() == 7  # decay 1/10 at first; counters copied
    avg[0].zero_()
    update(avg, cur, torch.tensor(10**6))
    assert avg[0].item() == pytest.approx(0.001)


def test_batches_cover_the_split_once_per_epoch_as_floats(prepared):
    split = load_prepared(prepared, "train")
    stream = BatchStream(
        split.images, split.labels, 64, torch.device("cpu"), generator=torch.Generator().manual_seed(0)
    )
    seen = []
    for x, y in stream:
        assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
        seen.append(y)
    assert len(stream) == 4 and torch.cat(seen).sort().values.tolist() == sorted(split.labels.tolist())


@pytest.mark.parametrize("hflip", [False, True])
def test_hflip_mirrors_about_half_the_images_and_nothing_else(hflip):
    # distinct, asymmetric images: each one's batch copy identifies it and whether it was mirrored
    images = (
        torch.randint(0, 256, (400, 32, 32, 3), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
        .permute(0, 3, 1, 2)
        .contiguous()
        .numpy()
    )
    labels = torch.arange(400) % 10
    stream = BatchStream(
        images,
        labels.numpy(),
        64,
        torch.device("cpu"),
        shuffle=False,
        generator=torch.Generator().manual_seed(0),
        hflip=hflip,
    )
    batches = list(stream)
    x = torch.cat([b[0] for b in batches])
    assert torch.equal(torch.cat([b[1] for b in batches]), labels)
    original = torch.from_numpy(images).float() / 255
    same = (x == original).flatten(1).all(1)
    mirrored = (x == original.flip(-1)).flatten(1).all(1)
    assert bool((same | mirrored).all())  # only whole-image mirrors, no other change
    if hflip:
        assert 150 < int(mirrored.sum()) < 250
        assert [bool(b) for b in mirrored] != [
            bool(b) for b in (torch.cat([b[0] for b in stream]) == original.flip(-1)).flatten(1).all(1)
        ]
    else:
        assert not mirrored.any()


@pytest.mark.parametrize("backbone", ["mlp", "conv"])
def test_one_epoch_lowers_the_loss(prepared, tmp_path, backbone):
    trainer = make_trainer(
        prepared, tmp_path / "ck.pt", backbone, epochs=1, ema_decay=None, kl_warmup_epochs=0.0, warmup_epochs=0.0
    )
    before = trainer.validate()["val_neg_elbo"]
    history = trainer.fit()
    assert history[-1]["val_neg_elbo"] < before


@pytest.mark.parametrize("augment", ["none", "hflip"])
def test_interrupted_and_resumed_equals_uninterrupted(prepared, tmp_path, augment):
    reference = make_trainer(prepared, tmp_path / "a.pt", augment=augment)
    reference.fit()

    class Killed(Exception):
        pass

    def kill_after_first_epoch(record, model):
        if record["epoch"] == 1:
            raise Killed

    interrupted = make_trainer(prepared, tmp_path / "b.pt", augment=augment)
    with pytest.raises(Killed):
        interrupted.fit(on_epoch_end=kill_after_first_epoch)
    resumed = make_trainer(prepared, tmp_path / "b.pt", augment=augment)
    assert resumed.try_resume() and resumed.epoch == 1
    resumed.fit()
    for name, tensor in reference.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
    for name, tensor in reference.eval_model.state_dict().items():
        assert torch.equal(tensor, resumed.eval_model.state_dict()[name]), name
    assert [r["val_neg_elbo"] for r in reference.history] == [r["val_neg_elbo"] for r in resumed.history]


def test_checkpoint_of_another_configuration_is_not_resumed(prepared, tmp_path):
    first = make_trainer(prepared, tmp_path / "c.pt", epochs=1)
    first.fit()
    other = make_trainer(prepared, tmp_path / "c.pt", epochs=1)
    other.fingerprint = "something else"
    assert not other.try_resume() and other.epoch == 0


def test_checkpoint_loads_with_weights_only(prepared, tmp_path):
    trainer = make_trainer(prepared, tmp_path / "d.pt", epochs=1)
    trainer.fit()
    state = torch.load(tmp_path / "d.pt", weights_only=True)
    assert state["epoch"] == 1 and state["fingerprint"] == "test"


def test_nan_loss_stops_with_clear_error_and_keeps_last_checkpoint(prepared, tmp_path):
    trainer = make_trainer(prepared, tmp_path / "e.pt", epochs=3)
    real_loss = trainer.model.loss

    def loss_turning_nan(x, y, **kw):
        terms = real_loss(x, y, **kw)
        if trainer.epoch >= 1:  # the second epoch diverges
            terms.loss = terms.loss * float("nan")
        return terms

    trainer.model.loss = loss_turning_nan
    with pytest.raises(TrainingError, match=r"non-finite loss \(nan\) at epoch 2.*epoch 1\) is kept.*train.lr"):
        trainer.fit()
    assert torch.load(tmp_path / "e.pt", weights_only=True)["epoch"] == 1


# --- the stage, as DVC runs it --------------------------------------------------------


def read_mlflow_run(workspace: Path):
    import mlflow

    info = json.loads((workspace / "models" / "mlflow_run.json").read_text())
    assert set(info) == {"run_id", "experiment_id", "model_uri"}  # ids only: no path of this machine
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{workspace.resolve() / 'mlflow.db'}")
    return client, client.get_run(info["run_id"])


def test_train_stage_tracks_one_mlflow_run_with_params_metrics_and_grids(tmp_path):
    ws = train_workspace(
        tmp_path / "ws",
        {"backbone": "mlp", "width": 32, "latent_dim": 8, "latent_resolution": 1},
        {"epochs": 2, "batch_size": 64},
    )
    result = run_stage("train", ws)
    assert result.returncode == 0, result.stderr
    client, run = read_mlflow_run(ws)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.backbone"] == "mlp" and run.data.params["train.epochs"] == "2"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_neg_elbo")] == [1, 2]
    for key in ("train_objective", "train_nll", "train_kl", "lr", "epoch_seconds", "images_per_second"):
        assert len(client.get_metric_history(run.info.run_id, key)) == 2, key
    assert run.data.tags["stage"] == "train"
    grids = [a.path for a in client.list_artifacts(run.info.run_id, "samples")]
    assert grids == ["samples/epoch_0001.png", "samples/epoch_0002.png"]
    metrics = json.loads((ws / "reports" / "train" / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["val_neg_elbo"] == pytest.approx(run.data.metrics["final_val_neg_elbo"])

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{ws / 'mlflow.db'}")  # the generator is logged by sample, not here
    assert mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list") == []
    assert {a.path for a in client.list_artifacts(run.info.run_id, "pipeline")} == {"pipeline/params.yaml"}
    assert not (ws / "models" / "checkpoints" / "last.pt").exists()  # complete: nothing left to "resume"

    # run again (`dvc repro -f train`): a stage that runs, computes — every epoch again, into a new run
    first_model = (ws / "models" / "model.pt").read_bytes()
    again = run_stage("train", ws)
    assert again.returncode == 0, again.stderr
    assert "resuming" not in again.stdout and "epoch 1/2" in again.stdout and "epoch 2/2" in again.stdout
    assert len((ws / "reports" / "train" / "history.csv").read_text().splitlines()) == 3
    _, rerun = read_mlflow_run(ws)
    assert rerun.info.run_id != run.info.run_id
    assert (ws / "models" / "model.pt").read_bytes() == first_model  # same inputs, computed again: same weights


def test_bad_backbone_fails_at_once_listing_valid_ones(tmp_path):
    ws = train_workspace(tmp_path / "ws", {"backbone": "transformer"}, {})
    result = run_stage("train", ws)
    assert result.returncode == 1
    assert "model.backbone = 'transformer' is invalid" in result.stderr
    assert "'mlp', 'conv' or 'resnet'" in result.stderr


@pytest.mark.slow
def test_killed_stage_resumes_to_the_same_weights(tmp_path):
    """SIGKILL the real stage process after its first checkpoint; `dvc repro train` again resumes."""
    settings = (
        {"backbone": "conv", "width": 16, "latent_dim": 16, "latent_resolution": 1},
        # fp32: two independent runs are compared, and auto's probe could choose differently in each on a
        # native-bf16 machine (a resumed run keeps its checkpoint's choice: tests/test_precision.py)
        {"epochs": 4, "batch_size": 32, "precision": "fp32"},
    )
    killed = train_workspace(tmp_path / "killed", *settings, train_per_class=60)
    clean = train_workspace(tmp_path / "clean", *settings, train_per_class=60)
    epoch_at_kill = kill_at_first_checkpoint([sys.executable, str(REPO / "stages" / "train.py")], killed, clean_env())
    assert 1 <= epoch_at_kill < 4, "the run finished before it could be killed; make it longer"
    assert not (killed / "models" / "model.pt").exists()

    resumed = run_stage("train", killed)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from models/checkpoints/last.pt after epoch {epoch_at_kill}/4" in resumed.stdout
    assert run_stage("train", clean).returncode == 0

    a = torch.load(killed / "models" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(clean / "models" / "model.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    _, run = read_mlflow_run(killed)
    assert run.info.status == "FINISHED"  # the killed run was continued, not abandoned
