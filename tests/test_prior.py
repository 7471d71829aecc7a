"""The latent prior: the diffusion model learns a known density, its sampler and guidance do what
they say, training resumes bit for bit, and the ``prior`` stage's file fails loudly when damaged."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from conftest import (
    REPO,
    TINY_MAP_MODEL,
    TINY_PRIOR,
    load_benchmark,
    model_params,
    prior_params,
    run_stage,
    train_workspace,
)

from cvae_pipeline.config import ConfigError, parse_params
from cvae_pipeline.errors import PipelineError
from cvae_pipeline.prior import load_prior, save_prior
from cvae_pipeline.prior.diffusion import GaussianDiffusion, MLPDenoiser, cosine_alpha_bar
from cvae_pipeline.prior.encoding import EncodedSet
from cvae_pipeline.prior.training import PriorTrainer, PriorTrainingError

#: a known 2-d mixture per class: (weight, mean) of each component, std 0.25 each
MIXTURE = {0: [(0.3, (-2.0, 0.0)), (0.7, (2.0, 0.0))], 1: [(1.0, (0.0, 2.5))]}
STD = 0.25


def mixture_set(per_class: int, seed: int) -> EncodedSet:
    rng = np.random.default_rng(seed)
    points, labels = [], []
    for label, components in MIXTURE.items():
        weights = [w for w, _ in components]
        which = rng.choice(len(components), size=per_class, p=weights)
        means = np.array([m for _, m in components])[which]
        points.append(means + rng.normal(0, STD, size=means.shape))
        labels.append(np.full(per_class, label))
    mean = np.concatenate(points).astype(np.float32)
    return EncodedSet(mean, np.zeros_like(mean), np.concatenate(labels).astype(np.int64))


#: the conv denoiser reads the 2-d points as a 1-channel 2x1 map: its 3x3 kernels tell the two positions
#: apart only through the zero padding, as at a real map's edges
MAP_SHAPE = (1, 2, 1)


def trainer_for(tmp_path, train, val, latent_shape=None, **overrides) -> PriorTrainer:
    cfg = prior_params(**{**TINY_PRIOR, "lr": 3e-3, "ema_decay": 0.995, **overrides})  # MLP unless overridden
    return PriorTrainer(
        cfg, train, val, len(MIXTURE), torch.device("cpu"), tmp_path / "prior_ck.pt", "test", latent_shape
    )


@pytest.fixture(scope="module")
def trained_mixture_prior(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mixture")
    trainer = trainer_for(tmp, mixture_set(1500, 0), mixture_set(100, 1), width=64, epochs=40, batch_size=200)
    trainer.fit()
    return trainer


@pytest.fixture(scope="module")
def trained_conv_mixture_prior(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("conv-mixture")
    trainer = trainer_for(
        tmp, mixture_set(1500, 0), mixture_set(100, 1), MAP_SHAPE, denoiser="conv", width=32, epochs=40, batch_size=200
    )
    trainer.fit()
    return trainer


@pytest.mark.parametrize("architecture", ["mlp", "conv"])
def test_the_denoiser_recovers_a_known_mixture_per_class(architecture, request):
    fixture = "trained_mixture_prior" if architecture == "mlp" else "trained_conv_mixture_prior"
    trained = request.getfixturevalue(fixture)
    assert trained.denoiser.architecture == architecture
    sampler = trained.fitted_prior().sampler(steps=50, guidance=1.0)
    for label, components in MIXTURE.items():
        z = sampler.sample(torch.full((3000,), label), 1.0, torch.Generator().manual_seed(label)).numpy()
        means = np.array([m for _, m in components])
        nearest = np.linalg.norm(z[:, None] - means[None], axis=2).argmin(1)
        for k, (weight, mean) in enumerate(components):
            mine = z[nearest == k]
            assert (nearest == k).mean() == pytest.approx(weight, abs=0.06), (label, k)
            assert np.allclose(mine.mean(0), mean, atol=0.15), (label, k, mine.mean(0))
            assert mine.std(0).mean() == pytest.approx(STD, abs=0.1), (label, k)
        # nothing drawn between the modes or into the other class's mode
        assert (np.linalg.norm(z[:, None] - means[None], axis=2).min(1) < 5 * STD).mean() > 0.97


def test_the_null_class_is_trained_only_with_label_dropout(tmp_path):
    train, val = mixture_set(200, 0), mixture_set(20, 1)
    for dropout, learns in ((0.3, True), (0.0, False)):
        trainer = trainer_for(tmp_path / str(dropout), train, val, label_dropout=dropout, ema_decay=None)
        null_before = trainer.denoiser.label.weight[trainer.denoiser.null_class].clone()
        trainer.fit()
        changed = not torch.equal(trainer.denoiser.label.weight[trainer.denoiser.null_class], null_before)
        assert changed == learns, dropout


def untrained_denoiser() -> MLPDenoiser:
    """A small denoiser whose output depends on its class (the zero-initialised output layers randomised)."""
    torch.manual_seed(0)
    denoiser = MLPDenoiser(3, 4, 16, 2).eval()
    for layer in (denoiser.output, denoiser.final_modulation[1]):
        torch.nn.init.normal_(layer.weight, std=0.5)
    return denoiser


def test_guidance_zero_is_unconditional_one_conditional_and_between_mixes_the_two():
    denoiser = untrained_denoiser()
    diffusion = GaussianDiffusion(50, "v")
    x, t, y = torch.randn(5, 3), torch.tensor([0, 10, 20, 30, 49]), torch.tensor([0, 1, 2, 3, 1])
    null = torch.full_like(y, denoiser.null_class)
    cond, uncond = denoiser(x, t, y), denoiser(x, t, null)
    assert torch.allclose(diffusion._guided(denoiser, x, t, y, 1.0), cond)
    assert torch.allclose(diffusion._guided(denoiser, x, t, y, 0.0), uncond)
    assert torch.allclose(diffusion._guided(denoiser, x, t, y, 3.0), uncond + 3.0 * (cond - uncond), atol=1e-5)
    # and a whole guidance-0 sample is the null class's sample, whatever the labels
    a = diffusion.sample(denoiser, y, 10, 0.0, 1.0, torch.Generator().manual_seed(1))
    b = diffusion.sample(denoiser, torch.zeros_like(y), 10, 0.0, 1.0, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_guidance_outside_its_interval_is_plain_conditional():
    """``benchmarks/prior_sweep.py --interval``: its diffusion guides only inside the interval."""
    prior_sweep = load_benchmark("prior_sweep")
    denoiser = untrained_denoiser()
    diffusion, y = GaussianDiffusion(50, "v"), torch.tensor([0, 1, 2, 3])

    def draw(guidance, interval=(0.0, 1.0)):
        limited = prior_sweep.GuidedInInterval(diffusion, interval)
        return limited.sample(denoiser, y, 10, guidance, 1.0, torch.Generator().manual_seed(1))

    guided = diffusion.sample(denoiser, y, 10, 3.0, 1.0, torch.Generator().manual_seed(1))
    conditional = diffusion.sample(denoiser, y, 10, 1.0, 1.0, torch.Generator().manual_seed(1))
    assert not torch.allclose(guided, conditional)
    assert torch.equal(draw(3.0, (0.0, 1.0)), guided)  # the whole schedule: guided throughout
    assert torch.equal(draw(3.0, (2.0, 3.0)), conditional)  # no step inside: plain conditional
    partly = draw(3.0, (0.3, 0.7))
    assert not torch.allclose(partly, guided) and not torch.allclose(partly, conditional)


def test_the_sampler_is_deterministic_for_a_seed(trained_mixture_prior):
    sampler = trained_mixture_prior.fitted_prior().sampler(steps=20, guidance=2.0)
    y = torch.tensor([0, 1, 0, 1])
    first = sampler.sample(y, 1.0, torch.Generator().manual_seed(3))
    assert torch.equal(first, sampler.sample(y, 1.0, torch.Generator().manual_seed(3)))
    assert not torch.equal(first, sampler.sample(y, 1.0, torch.Generator().manual_seed(4)))


def test_the_cosine_schedule_runs_from_signal_to_noise():
    alpha_bar = cosine_alpha_bar(1000)
    assert alpha_bar[0] > 0.999 and alpha_bar[-1] < 1e-4 and bool((alpha_bar[1:] < alpha_bar[:-1]).all())
    assert (
        GaussianDiffusion(1000, "v").schedule(50)[:2] == [999, 979]
        and GaussianDiffusion(1000, "v").schedule(50)[-1] == 0
    )


def test_a_killed_training_resumes_to_the_same_weights(tmp_path):
    """A kill after an epoch's checkpoint, then a new trainer (a new process): bit-identical weights,
    EMA and history to a run never interrupted."""
    train, val = mixture_set(300, 0), mixture_set(30, 1)
    whole = trainer_for(tmp_path / "whole", train, val, epochs=3)
    whole.fit()

    class Killed(Exception):
        pass

    def kill_after_first(record):
        if record["epoch"] == 1:
            raise Killed

    first = trainer_for(tmp_path / "killed", train, val, epochs=3)
    with pytest.raises(Killed):
        first.fit(kill_after_first)
    resumed = trainer_for(tmp_path / "killed", train, val, epochs=3)
    assert resumed.try_resume() and resumed.epoch == 1
    resumed.fit()
    for key, value in whole.state()["ema"].items():
        assert torch.equal(value, resumed.state()["ema"][key]), key
    for key, value in whole.denoiser.state_dict().items():
        assert torch.equal(value, resumed.denoiser.state_dict()[key]), key
    assert [r["train_loss"] for r in whole.history] == [r["train_loss"] for r in resumed.history]


def test_a_diverging_training_stops_with_one_line(tmp_path):
    train, val = mixture_set(100, 0), mixture_set(10, 1)
    trainer = trainer_for(tmp_path, train, val)
    trainer.train = (trainer.train[0] * float("nan"), *trainer.train[1:])
    with pytest.raises(
        PriorTrainingError, match=r"prior training diverged \(loss nan\) at epoch 1.*Fix: lower prior.lr"
    ):
        trainer.fit()
    assert not (tmp_path / "prior_ck.pt").exists()


def test_the_prior_file_fails_with_one_line_when_missing_damaged_or_stale(tmp_path):
    path = tmp_path / "prior.pt"
    with pytest.raises(PipelineError, match="fitted prior missing; run `dvc repro prior`"):
        load_prior(path)
    path.write_bytes(b"not a torch file")
    with pytest.raises(PipelineError, match=r"damaged or not the file expected here .*`dvc repro -f prior`"):
        load_prior(path)
    save_prior(path, "none", "abc", ["a", "b"], None)
    assert load_prior(path, "abc") == ("none", None)
    with pytest.raises(PipelineError, match="fitted on the latents of another trained model"):
        load_prior(path, "def")


def test_sampling_from_a_fitted_density_that_is_none_is_a_config_error():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["prior"]["kind"] = "none"
    raw["sample"]["latents"] = "fitted"
    with pytest.raises(ConfigError, match="set sample.latents: model or prior.kind: diffusion"):
        parse_params(raw)
    raw["sample"]["latents"] = "model"
    assert parse_params(raw).prior.kind == "none"
    raw["prior"]["prediction"] = "x0"
    with pytest.raises(ConfigError, match=r"prior.prediction = 'x0' is invalid"):
        parse_params(raw)


def test_the_stages_draw_from_the_diffusion_prior_and_the_served_generator_draws_the_same(tmp_path, monkeypatch):
    """train, prior, sample as a user runs them (tracked in the workspace's SQLite store): the prior is
    a DVC-visible file with its loss curve, grid and metrics, and the generator ``sample`` logged and
    registered draws, for the stage's seed, exactly the images the stage drew. On a model
    with a latent map and the conv denoiser, as the default (the tiny pipelines cover the MLP's)."""
    import mlflow

    ws = train_workspace(tmp_path / "ws", TINY_MAP_MODEL, {"epochs": 1, "batch_size": 64})
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["prior"].update({**TINY_PRIOR, "denoiser": "conv", "width": 16})
    params["sample"].update(per_class=4, steps=8, guidance=2.0, temperature=0.9, seed=3)
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for stage in ("train", "prior", "refine", "sample"):
        result = run_stage(stage, ws)
        assert result.returncode == 0, f"{stage}: {result.stderr[-2000:]}"
    metrics = json.loads((ws / "reports/prior/metrics.json").read_text())
    assert metrics["kind"] == "diffusion" and metrics["epochs"] == 2 and np.isfinite(metrics["val_loss"])
    history = (ws / "reports/prior/history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,train_loss,val_loss") and len(history) == 3
    sampling = json.loads((ws / "data/samples/sampling.json").read_text())
    assert (
        sampling["latents"]
        == "diffusion prior (conv 2x16 on 2x4x4, v-prediction; 8 DPM-Solver++(2M) steps, guidance 2)"
    )

    train_run = json.loads((ws / "models/mlflow_run.json").read_text())["run_id"]
    prior_run = json.loads((ws / "models/prior_run.json").read_text())["run_id"]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{ws / 'mlflow.db'}")
    run = client.get_run(prior_run)  # a run of its own, nested under the training's
    assert run.data.tags["mlflow.parentRunId"] == train_run and run.data.tags["stage"] == "prior"
    assert run.data.params["prior.kind"] == "diffusion" and "prior_val_loss" in run.data.metrics
    assert [m.step for m in client.get_metric_history(prior_run, "prior_train_loss")] == [1, 2]
    assert "prior/samples.png" in {a.path for a in client.list_artifacts(prior_run, "prior")}

    images = np.load(ws / "data/samples/images.npy")
    labels = np.load(ws / "data/samples/labels.npy")
    monkeypatch.chdir(ws)
    mlflow.set_tracking_uri(f"sqlite:///{ws / 'mlflow.db'}")
    generator = json.loads((ws / "data/samples/generator.json").read_text())["model_uri"]
    served = mlflow.pyfunc.load_model(generator).predict(labels.tolist(), params={"seed": 3})
    served = (np.clip(served, 0, 1) * 255).round().astype(np.uint8)
    assert np.abs(served.astype(int) - images.astype(int)).max() <= 1  # the same draws (float rounding aside)
    assert (served == images).mean() > 0.99

    # a damaged prior stops sample with one line naming the file and the stage that re-creates it
    prior_file = ws / "models/prior.pt"
    prior_file.write_bytes(prior_file.read_bytes()[:200])
    monkeypatch.chdir(tmp_path)
    result = run_stage("sample", ws)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert (
        lines[0].startswith("error: models/prior.pt: damaged or not the file expected here")
        and "dvc repro -f prior" in lines[0]
    )


@pytest.mark.parametrize("damage", ["truncated", "random bytes", "header zeroed", "empty"])
def test_a_damaged_gmm_prior_file_names_itself_and_the_prior_stage(tmp_path, damage):
    """The ex-post GMM lives in the same file as the diffusion prior (``prior.kind: gmm``): a damaged one is
    one line naming it and the stage that re-fits it, never a traceback from torch or the mixture."""
    from cvae_pipeline.prior import GMMPrior
    from cvae_pipeline.prior.gmm import ClassGMM

    rng = np.random.default_rng(0)
    gmm = ClassGMM.fit(rng.normal(size=(60, 4)).astype(np.float32), np.repeat(np.arange(3), 20), 3, components=2)
    path = tmp_path / "prior.pt"
    save_prior(path, "gmm", "abc", ["a", "b", "c"], GMMPrior(gmm))
    assert load_prior(path, "abc")[0] == "gmm"
    data = path.read_bytes()
    damaged = {
        "truncated": data[: len(data) // 2],
        "random bytes": rng.bytes(len(data)),
        "header zeroed": bytes(64) + data[64:],
        "empty": b"",
    }[damage]
    path.write_bytes(damaged)
    with pytest.raises(PipelineError, match=r"prior.pt: damaged or not the file expected here .*`dvc repro -f prior`"):
        load_prior(path, "abc")


def test_a_conv_denoiser_on_a_flat_latent_is_a_config_error_naming_both_fixes():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["model"].update(latent_resolution=1)
    raw["prior"].update(kind="diffusion", denoiser="conv")
    with pytest.raises(ConfigError, match=r"prior.denoiser 'conv' needs a latent map.*prior.denoiser: mlp") as error:
        parse_params(raw)
    assert str(error.value).startswith("params.yaml: prior.denoiser") and "\n" not in str(error.value)
    assert "{" not in str(error.value)  # the check across sections names the keys, not the whole params dump
    raw["prior"]["denoiser"] = "mlp"
    assert parse_params(raw).prior.denoiser == "mlp"


@pytest.mark.parametrize("resolution", [1, 4, 8])
def test_the_configured_latent_shape_is_the_models(resolution):
    """The conv denoiser is built for ``model.latent_shape`` from the config and fed the trained model's
    flat z: the two must agree, and a flat z round-trips through the denoiser's map view."""
    from cvae_pipeline.models import build_model
    from cvae_pipeline.prior.diffusion import build_denoiser

    cfg = model_params(latent_dim=64, latent_resolution=resolution, width=8, blocks=0)
    assert build_model(cfg, 3).latent_shape == cfg.latent_shape
    architecture = "mlp" if resolution == 1 else "conv"
    denoiser = build_denoiser(architecture, cfg.latent_shape, 3, 8, 1)
    out = denoiser(torch.randn(2, 64), torch.tensor([3, 7]), torch.tensor([0, 2]))
    assert out.shape == (2, 64) and out.dtype == torch.float32 and denoiser.dim == 64


def test_a_conv_prior_file_round_trips_and_draws_the_same(trained_conv_mixture_prior, tmp_path):
    prior = trained_conv_mixture_prior.fitted_prior()
    save_prior(tmp_path / "prior.pt", "diffusion", "abc", ["a", "b"], prior)
    kind, loaded = load_prior(tmp_path / "prior.pt", "abc")
    assert kind == "diffusion" and loaded.denoiser.architecture == "conv" and loaded.denoiser.shape == MAP_SHAPE
    y = torch.tensor([0, 1, 1, 0])
    draw = [p.sampler(10, 2.0).sample(y, 1.0, torch.Generator().manual_seed(5)) for p in (prior, loaded)]
    assert torch.equal(draw[0], draw[1])
    assert loaded.describe(10, 2.0) == "diffusion prior (conv 2x32 on 1x2x1, v-prediction; 10 DDIM steps, guidance 2)"
    assert "10 DPM-Solver++(2M) steps" in loaded.describe(10, 2.0, "dpmpp_2m")
