from __future__ import annotations

import itertools
import math
import typing

import pytest
import torch
from conftest import model_params
from torch.distributions import Normal, kl_divergence

from cvae_pipeline.config import Backbone, ModelParams
from cvae_pipeline.models import BACKBONES, build_model
from cvae_pipeline.models.base import gaussian_kl
from cvae_pipeline.models.likelihoods import Bernoulli, Gaussian

CASES = list(itertools.product(["mlp", "conv", "resnet"], ["bernoulli", "gaussian"], ["concat", "film"]))


def small(backbone: str, likelihood: str = "gaussian", conditioning: str = "film", **kw) -> ModelParams:
    return model_params(
        backbone=backbone,
        likelihood=likelihood,
        conditioning=conditioning,
        latent_dim=8,
        width=16 if backbone == "mlp" else 8,
        **{"latent_resolution": 1, **kw},
    )


def batch(n: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_config_lists_exactly_the_registered_backbones():
    assert set(typing.get_args(Backbone)) == set(BACKBONES)


@pytest.mark.parametrize(("backbone", "likelihood", "conditioning"), CASES)
def test_shapes_backward_and_finite_loss(backbone, likelihood, conditioning):
    torch.manual_seed(0)
    model = build_model(small(backbone, likelihood, conditioning), num_classes=10)
    x, y = batch()
    mu, logvar, _ = model.encode(x, y)
    assert mu.shape == logvar.shape == (6, 8)
    assert model.decode(mu, y).shape == (6, 3, 32, 32)
    terms = model.loss(x, y, beta=0.5, free_bits=0.1)
    assert all(torch.isfinite(t) for t in (terms.loss, terms.nll, terms.kl))
    terms.loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    samples = model.sample(torch.arange(10))
    assert samples.shape == (10, 3, 32, 32) and samples.min() >= 0 and samples.max() <= 1
    assert model.reconstruct(x, y).shape == x.shape


@pytest.mark.parametrize("conditioning", ["concat", "film"])
def test_label_changes_the_sample(conditioning):
    torch.manual_seed(0)
    model = build_model(small("conv", conditioning=conditioning), 10)
    for p in model.parameters():  # FiLM starts at identity: give it something to say
        torch.nn.init.normal_(p, std=0.2)
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731 - same latent draw for both labels
    a = model.sample(torch.tensor([0]), generator=g())
    b = model.sample(torch.tensor([5]), generator=g())
    assert not torch.allclose(a, b)


def test_loss_matches_hand_computation_mlp_bernoulli():
    """ELBO of the classic CVAE, recomputed term by term with plain formulas."""
    torch.manual_seed(0)
    model = build_model(small("mlp", "bernoulli", "concat"), 10)
    x, y = batch(4)
    beta, free_bits = 0.7, 0.0
    torch.manual_seed(42)
    terms = model.loss(x, y, beta=beta, free_bits=free_bits)

    torch.manual_seed(42)
    with torch.no_grad():
        mu, logvar, _ = model.encode(x, y)
        eps = torch.randn_like(mu)
        z = mu + eps * torch.exp(0.5 * logvar)
        p = torch.sigmoid(model.decode(z, y)).double()
        xd = x.double()
        bce = -(xd * torch.log(p) + (1 - xd) * torch.log(1 - p)).flatten(1).sum(1)
        kl = (-0.5 * (1 + logvar - mu**2 - logvar.exp())).double().sum(1)
    assert terms.nll.item() == pytest.approx(bce.mean().item(), rel=1e-5)
    assert terms.kl.item() == pytest.approx(kl.mean().item(), rel=1e-5)
    assert terms.loss.item() == pytest.approx((bce.mean() + beta * kl.mean()).item(), rel=1e-5)


def test_free_bits_clamps_batch_mean_kl_per_dimension():
    torch.manual_seed(0)
    model = build_model(small("mlp", "bernoulli", "concat"), 10)
    x, y = batch(4)
    torch.manual_seed(1)
    plain = model.loss(x, y, beta=1.0, free_bits=0.0)
    torch.manual_seed(1)
    with torch.no_grad():
        mu, logvar, _ = model.encode(x, y)
    per_dim = gaussian_kl(mu, logvar).mean(0)
    torch.manual_seed(1)
    clamped = model.loss(x, y, beta=1.0, free_bits=5.0)
    expected = plain.nll + per_dim.clamp(min=5.0).sum()
    assert clamped.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert clamped.kl.item() == pytest.approx(plain.kl.item())  # reported KL is the true KL


def test_analytic_kl_matches_torch_distributions():
    mu, logvar = torch.randn(5, 7), torch.randn(5, 7)
    expected = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0))
    assert torch.allclose(gaussian_kl(mu, logvar), expected, atol=1e-5)


@pytest.mark.parametrize("variance", ["fixed", "learned"])
def test_gaussian_nll_matches_torch_normal(variance):
    lik = Gaussian(variance, fixed_std=0.2)
    out, x = torch.randn(3, 3, 32, 32), torch.rand(3, 3, 32, 32)
    expected = -Normal(torch.sigmoid(out), 0.2).log_prob(x).flatten(1).sum(1)
    assert torch.allclose(lik.nll(out, x), expected, rtol=1e-4)
    assert (variance == "learned") == any(p.requires_grad for p in lik.parameters())


def test_bernoulli_nll_is_bce_and_mean_is_sigmoid():
    out, x = torch.randn(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    p = torch.sigmoid(out)
    expected = -(x * p.log() + (1 - x) * (1 - p).log()).flatten(1).sum(1)
    assert torch.allclose(Bernoulli().nll(out, x), expected, rtol=1e-4)
    assert torch.allclose(Bernoulli().mean(out), p)


def test_mlp_is_the_classic_architecture():
    model = build_model(
        model_params(
            backbone="mlp", latent_resolution=1, width=128, latent_dim=32, conditioning="concat", likelihood="bernoulli"
        ),
        10,
    )
    assert model.enc_hidden.in_features == 3072 + 10 and model.enc_hidden.out_features == 128
    assert model.enc_mu.out_features == model.enc_logvar.out_features == 32
    assert model.dec_hidden.in_features == 32 + 10 and model.dec_out.out_features == 3072


def test_temperature_scales_the_latent_draw():
    torch.manual_seed(0)
    model = build_model(small("mlp", "bernoulli", "concat"), 10)
    zero_temp = model.sample(torch.tensor([1, 1]), temperature=0.0)
    assert torch.allclose(zero_temp[0], zero_temp[1])  # z = 0 for both: identical images
    assert not math.isnan(zero_temp.sum().item())


@pytest.mark.parametrize(
    ("resolution", "posterior", "conditioning"),
    [(4, "none", "concat"), (8, "none", "film"), (8, "iaf", "film"), (4, "planar", "film")],
)
def test_latent_map_backbone_keeps_z_flat_and_trains(resolution, posterior, conditioning):
    """A latent map is a flat [B, latent_dim] z to the rest of the model (flows, priors, the GMM)."""
    torch.manual_seed(0)
    cfg = model_params(
        backbone="resnet",
        latent_dim=2 * resolution**2,
        width=8,
        latent_resolution=resolution,
        conditioning=conditioning,
        flow={"posterior": posterior, "steps": 2, "hidden": 16},
    )
    model = build_model(cfg, num_classes=10)
    x, y = batch()
    mu, logvar, context = model.encode(x, y)
    assert mu.shape == logvar.shape == (6, 2 * resolution**2)
    assert (context is None) == (posterior == "none")
    terms = model.loss(x, y, beta=0.5)
    terms.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.sample(torch.arange(10)).shape == (10, 3, 32, 32)


def test_latent_map_decoder_is_local():
    """The point of a latent map: a change of z at one corner of the 8x8 map moves the image near
    that corner far more than at the opposite one (a vector z has no such layout)."""
    torch.manual_seed(0)
    model = build_model(model_params(backbone="resnet", latent_dim=64, width=8, latent_resolution=8), 10).eval()
    y = torch.zeros(1, dtype=torch.long)
    z = torch.zeros(1, 64)
    moved = z.clone()
    moved[0, 0] = 5.0  # channel 0, row 0, column 0 of the map
    change = (model.decode(moved, y) - model.decode(z, y)).abs().sum(1)[0]
    assert change[:8, :8].sum() > 10 * change[24:, 24:].sum()


def test_latent_map_params_are_checked():
    with pytest.raises(ValueError, match="multiple of 64"):
        model_params(backbone="resnet", latent_dim=100, latent_resolution=8)
    with pytest.raises(ValueError, match="needs backbone resnet"):
        model_params(backbone="conv", latent_dim=64, latent_resolution=8)


def test_model_params_have_no_defaults_of_their_own():
    """params.yaml is the one place a default lives: a key missing there is an error, never a silent
    fallback to a second value in the code that could disagree with it."""
    with pytest.raises(ValueError, match="latent_resolution"):
        ModelParams.model_validate({k: v for k, v in model_params().model_dump().items() if k != "latent_resolution"})
