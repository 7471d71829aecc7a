"""Latent flows, the flow prior, the ex-post GMM and the new likelihoods."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_prepared, model_params, run_stage, train_params, train_workspace
from torch.distributions import Normal

from cvae_pipeline.data.prepared import load_prepared
from cvae_pipeline.errors import PipelineError
from cvae_pipeline.models import build_model
from cvae_pipeline.models.base import gaussian_kl
from cvae_pipeline.models.flows import AffineCoupling, FlowPrior, IAFStep, PlanarStep, PosteriorFlow
from cvae_pipeline.models.likelihoods import DiscretizedLogisticMixture, Gaussian
from cvae_pipeline.precision import Precision
from cvae_pipeline.prior import ClassGMM, load_prior
from cvae_pipeline.training.loop import Trainer

DIM, CONTEXT = 5, 3


def autograd_log_det(transform, z: torch.Tensor) -> torch.Tensor:
    """log|det dz'/dz| of a per-example map, one Jacobian per example, [B]."""
    out = []
    for i in range(len(z)):
        jac = torch.autograd.functional.jacobian(lambda v, i=i: transform(v[None], i)[0], z[i])
        out.append(torch.linalg.slogdet(jac.double())[1].float())
    return torch.stack(out)


def randomise(module: torch.nn.Module, scale: float = 0.5) -> torch.nn.Module:
    """Non-trivial weights: the flows start at (or near) the identity on purpose."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return module


@pytest.mark.parametrize(
    "step",
    [
        lambda: PlanarStep(DIM, CONTEXT),
        lambda: IAFStep(DIM, CONTEXT, hidden=16),
    ],
    ids=["planar", "iaf"],
)
def test_posterior_flow_step_log_det_equals_autograd_jacobian(step):
    step = randomise(step())
    z, context = torch.randn(4, DIM), torch.randn(4, CONTEXT)
    _, log_det = step(z, context)
    expected = autograd_log_det(lambda v, i: step(v, context[i : i + 1])[0], z)
    assert torch.allclose(log_det, expected, atol=1e-4), (log_det, expected)


def test_whole_posterior_flow_log_det_is_the_sum_over_steps():
    flow = randomise(PosteriorFlow("iaf", 3, DIM, CONTEXT, hidden=16), 0.3)
    z, context = torch.randn(3, DIM), torch.randn(3, CONTEXT)
    _, log_det = flow(z, context)
    expected = autograd_log_det(lambda v, i: flow(v, context[i : i + 1])[0], z)
    assert torch.allclose(log_det, expected, atol=1e-4)


def test_iaf_is_autoregressive_and_invertible():
    step = randomise(IAFStep(DIM, CONTEXT, hidden=16), 0.3).double()  # double: gates near 0 amplify rounding
    z, context = torch.randn(4, DIM, dtype=torch.double), torch.randn(4, CONTEXT, dtype=torch.double)
    out, _ = step(z, context)
    assert torch.allclose(step.inverse(out, context), z, atol=1e-8)
    jac = torch.autograd.functional.jacobian(lambda v: step(v[None], context[:1])[0][0].flip(-1), z[0])
    assert torch.allclose(jac.triu(1), torch.zeros_like(jac))  # output i ignores inputs > i


def test_planar_step_stays_invertible_even_when_w_u_is_very_negative():
    step = PlanarStep(DIM, CONTEXT)
    with torch.no_grad():  # u = -w exactly: w.u = -|w|^2, which the unconstrained step cannot invert
        step.params.weight.zero_()
        step.params.bias.copy_(torch.cat([-torch.ones(DIM) * 3, torch.ones(DIM) * 3, torch.zeros(1)]))
    z = torch.linspace(-3, 3, 50)[:, None] * torch.ones(1, DIM)
    _, log_det = step(z, torch.zeros(50, CONTEXT))
    assert torch.isfinite(log_det).all() and (log_det > math.log(1e-7)).all()  # det = 1 + u_hat.psi > 0


def test_affine_coupling_and_flow_prior_log_det_and_inverse():
    coupling = randomise(AffineCoupling(DIM, 2, 16, torch.arange(DIM) % 2))
    z, cond = torch.randn(4, DIM), torch.randn(4, 2)
    u, log_det = coupling(z, cond)
    assert torch.allclose(log_det, autograd_log_det(lambda v, i: coupling(v, cond[i : i + 1])[0], z), atol=1e-4)
    assert torch.allclose(coupling.inverse(u, cond), z, atol=1e-5)

    prior = randomise(FlowPrior(DIM, num_classes=3, steps=4, hidden=16), 0.3)
    y = torch.tensor([0, 1, 2, 1])
    u, log_det = prior.to_base(z, y)
    assert torch.allclose(log_det, autograd_log_det(lambda v, i: prior.to_base(v, y[i : i + 1])[0], z), atol=1e-4)
    g = torch.Generator().manual_seed(0)
    drawn = prior.sample(y, 1.0, g)
    back, _ = prior.to_base(drawn, y)
    assert torch.allclose(back, torch.randn(4, DIM, generator=torch.Generator().manual_seed(0)), atol=1e-4)


def test_flow_prior_is_a_normalised_density_in_one_dimension_pair():
    prior = randomise(FlowPrior(2, num_classes=2, steps=2, hidden=8), 0.3)
    grid = torch.linspace(-8, 8, 401)
    zz = torch.cartesian_prod(grid, grid)
    with torch.no_grad():
        density = prior.log_prob(zz, torch.ones(len(zz), dtype=torch.long)).exp()
    assert float(density.sum() * (grid[1] - grid[0]) ** 2) == pytest.approx(1.0, abs=0.01)


def test_monte_carlo_kl_without_flow_matches_analytic_kl_in_expectation():
    torch.manual_seed(0)
    model = build_model(model_params(backbone="mlp", latent_resolution=1, width=16, latent_dim=6, prior="standard"), 10)
    x, y = torch.rand(4, 3, 32, 32), torch.arange(4)
    posterior = model.encode(x, y)
    draws = []
    for _ in range(4000):
        z, log_q = model.draw_latent(posterior)
        draws.append(log_q - model.prior.log_prob(z, y))
    draws = torch.stack(draws).detach()
    analytic = gaussian_kl(posterior.mu, posterior.logvar).sum(1).detach()
    stderr = draws.std(0) / math.sqrt(len(draws))
    assert ((draws.mean(0) - analytic).abs() < 4 * stderr + 1e-3).all(), (draws.mean(0), analytic)


def test_iw_bound_is_tighter_than_the_elbo_with_a_posterior_flow():
    torch.manual_seed(0)
    model = build_model(
        model_params(
            backbone="mlp", latent_resolution=1, width=16, latent_dim=4, flow={"posterior": "iaf"}, prior="flow"
        ),
        10,
    )
    x, y = torch.rand(3, 3, 32, 32), torch.arange(3)
    log_w = model.log_importance_weights(x, y, 64).detach()
    assert (torch.logsumexp(log_w, 0) - math.log(64) >= log_w.mean(0)).all()


def test_logistic_mixture_probabilities_of_a_pixel_sum_to_one_over_all_256_cubed_values():
    lik = DiscretizedLogisticMixture(mixtures=3)
    g = torch.Generator().manual_seed(0)
    out = torch.randn(1, lik.out_channels, 1, 1, generator=g) * 2
    values = torch.arange(256, dtype=torch.float32) / 255
    gb = torch.cartesian_prod(values, values)  # every (g, b)
    total = 0.0
    for r in values:
        x = torch.stack([r.expand(len(gb)), gb[:, 0], gb[:, 1]], 1)[:, :, None, None]
        total += lik.log_prob_pixels(out.expand(len(gb), -1, -1, -1), x).double().exp().sum().item()
    assert total == pytest.approx(1.0, abs=1e-4)


def test_logistic_mixture_nll_is_in_bits_per_dim_range_and_its_sample_on_the_grid():
    lik = DiscretizedLogisticMixture(mixtures=2)
    out = torch.zeros(2, lik.out_channels, 32, 32)
    x = torch.randint(0, 256, (2, 3, 32, 32)).float() / 255
    bits = lik.nll(out, x) / (3072 * math.log(2))
    assert ((bits > 0) & (bits < 16)).all()
    sample = lik.sample(out, torch.Generator().manual_seed(0))
    assert sample.shape == (2, 3, 32, 32) and 0 <= sample.min() and sample.max() <= 1
    assert lik.mean(out).shape == (2, 3, 32, 32) and lik.discrete


def test_per_pixel_gaussian_reads_its_std_from_the_decoder():
    lik = Gaussian("pixel", fixed_std=0.1)
    logits, raw = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32) * 0.5
    x = torch.rand(2, 3, 32, 32)
    expected = -Normal(torch.sigmoid(logits), 0.1 * raw.exp()).log_prob(x).flatten(1).sum(1)
    assert torch.allclose(lik.nll(torch.cat([logits, raw], 1), x), expected, rtol=1e-4)
    assert lik.out_channels == 6 and not list(lik.parameters())


def test_class_gmm_samples_follow_each_class_and_temperature():
    rng = np.random.default_rng(0)
    latents = np.concatenate([rng.normal(c * 10, 1.0, size=(200, 3)) for c in range(3)])
    labels = np.repeat(np.arange(3), 200)
    gmm = ClassGMM.fit(latents, labels, 3, components=2)
    y = torch.tensor([0] * 500 + [2] * 500)
    z = gmm.sample(y, 1.0, torch.Generator().manual_seed(0))
    assert z[:500].mean().item() == pytest.approx(0, abs=0.3) and z[500:].mean().item() == pytest.approx(20, abs=0.3)
    assert z[:500].std(0).mean().item() == pytest.approx(1.0, abs=0.15)
    cold = gmm.sample(y, 0.0, torch.Generator().manual_seed(0))
    assert cold[:500].std(0).max().item() < 0.5  # only the component means remain
    assert torch.equal(z, gmm.sample(y, 1.0, torch.Generator().manual_seed(0)))
    with pytest.raises(PipelineError, match="gmm_components"):
        ClassGMM.fit(latents[:5], labels[:5], 1, components=10)


NEW_OPTIONS = {
    "planar": {"flow": {"posterior": "planar", "steps": 2}},
    "iaf": {"flow": {"posterior": "iaf", "steps": 2, "hidden": 32}},
    "flow-prior": {"prior": "flow", "flow": {"prior_steps": 2, "hidden": 32}},
    "logistic-mixture": {"likelihood": "logistic_mixture", "mixtures": 3},
    "gaussian-pixel": {"gaussian_variance": "pixel"},
    "latent-map": {"backbone": "resnet", "latent_resolution": 4, "latent_dim": 32},
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_prepared(tmp_path_factory.mktemp("data") / "prepared", train_per_class=6)


@pytest.mark.parametrize("option", NEW_OPTIONS.values(), ids=NEW_OPTIONS.keys())
def test_each_new_option_trains_one_epoch_on_a_tiny_subset(tiny, tmp_path, option):
    torch.manual_seed(0)
    model = build_model(
        model_params(**{"backbone": "conv", "latent_resolution": 1, "latent_dim": 8, "width": 8, **option}), 10
    )
    cfg = train_params(
        epochs=1, batch_size=20, lr=2e-3, kl_warmup_epochs=0, warmup_epochs=0, ema_decay=None, free_bits=0.05
    )
    trainer = Trainer(
        model,
        cfg,
        torch.device("cpu"),
        load_prepared(tiny, "train"),
        load_prepared(tiny, "val"),
        tmp_path / "ck.pt",
        fingerprint="test",
    )
    before = trainer.validate()["val_neg_elbo"]
    history = trainer.fit()
    assert math.isfinite(history[-1]["val_neg_elbo"]) and history[-1]["val_neg_elbo"] < before
    images = model.sample(torch.arange(10), decoder_output="sample", generator=torch.Generator().manual_seed(0))
    assert images.shape == (10, 3, 32, 32)


def test_prior_and_sample_stages_with_a_gmm_and_likelihood_draws(tmp_path):
    """train, prior (prior.kind=gmm) and sample (decoder_output=sample) as stages, untracked, on a model
    with a posterior flow (whose central latents the GMM is fitted on)."""
    ws = train_workspace(
        tmp_path / "ws",
        {
            "backbone": "mlp",
            "width": 16,
            "latent_dim": 4,
            "latent_resolution": 1,
            "flow": {"posterior": "iaf", "steps": 2, "hidden": 16, "prior_steps": 4},
        },
        {"epochs": 1, "batch_size": 50},
        train_per_class=6,
    )
    import yaml

    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["prior"].update(kind="gmm", gmm_components=2)
    params["sample"].update(latents="fitted", decoder_output="sample", per_class=3)
    params["mlflow"]["required"] = False
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}  # unreachable: runs untracked
    for stage in ("train", "prior", "refine", "sample"):
        result = run_stage(stage, ws, env=env)
        assert result.returncode == 0, result.stderr[-2000:]
    sampling = json.loads((ws / "data/samples/sampling.json").read_text())
    assert Precision.parse(sampling.pop("precision"))  # the one sample.precision resolved to
    assert sampling == {
        "latents": "ex-post GMM (2 per class)",
        "images": "draw from the likelihood",
        "temperature": params["sample"]["temperature"],
    }
    assert np.load(ws / "data/samples/images.npy").shape == (30, 3, 32, 32)
    kind, prior = load_prior(ws / "models/prior.pt")
    assert kind == "gmm" and prior.gmm.means.shape == (10, 2, 4)
    assert json.loads((ws / "reports/prior/metrics.json").read_text())["kind"] == "gmm"
