"""The adversarial decoder refinement on tiny models: what it may change, what it must not, and its balance."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import model_params, refine_params

from cvae_pipeline.models import build_model
from cvae_pipeline.refinement.adversarial import (
    DecoderRefiner,
    PatchDiscriminator,
    RefinementError,
    adaptive_weight,
    hinge_discriminator_loss,
    hinge_generator_loss,
    split_parameters,
)


def tiny(backbone: str = "resnet", **kw):
    torch.manual_seed(0)
    extra = (
        {"latent_dim": 64, "latent_resolution": 4}
        if backbone == "resnet"
        else {"latent_dim": 8, "latent_resolution": 1}
    )
    params = model_params(backbone=backbone, width=8, conditioning="film", **{**extra, **kw})
    return build_model(params, num_classes=10)


def images(n: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64)


SETTINGS = refine_params(steps=4, batch_size=8, delay=1, adversarial_weight=1.0, max_weight=10.0, lr=1e-3)


@pytest.mark.parametrize("backbone", ["mlp", "conv", "resnet"])
def test_the_split_keeps_the_shared_label_embedding_with_the_encoder(backbone):
    model = tiny(backbone)
    encoder, decoder, last = split_parameters(model)
    assert set(encoder).isdisjoint(decoder)
    assert "embed.weight" in encoder and "embed.weight" not in decoder
    assert last in decoder and last.endswith("weight")
    # every parameter the plain ELBO trains is one or the other
    assert set(encoder) | set(decoder) == {n for n, _ in model.named_parameters()}
    assert "likelihood.log_std" in decoder


def test_the_last_layer_is_the_one_that_writes_the_decoder_output():
    _, _, last = split_parameters(tiny("resnet"))
    assert last == "out.weight"


@pytest.mark.parametrize("backbone", ["conv", "resnet"])
def test_refinement_changes_the_decoder_and_leaves_the_encoder_bit_for_bit(backbone):
    model = tiny(backbone)
    x, y = images()
    refiner = DecoderRefiner(model, SETTINGS, x, y, torch.device("cpu"))
    rows = refiner.run()
    assert [r["step"] for r in rows] == [4]  # one row per checkpoint_every steps (100), and the last
    refined = refiner.refined
    before, after = model.state_dict(), refined.state_dict()
    for name in split_parameters(model)[0]:
        assert torch.equal(before[name], after[name]), name
    assert any(not torch.equal(before[n], after[n]) for n in refiner.decoder_names)
    batch = torch.from_numpy(x[:4]).float() / 255, torch.from_numpy(y[:4])
    with torch.no_grad():
        assert torch.equal(model.encode(*batch).mu, refined.encode(*batch).mu)
    # the input model is not modified in place
    assert all(p.requires_grad for p in model.parameters())


def test_the_adversarial_term_waits_for_the_delay():
    x, y = images()
    cfg = refine_params(steps=3, batch_size=8, delay=2, checkpoint_every=1)
    refiner = DecoderRefiner(tiny(), cfg, x, y, torch.device("cpu"))
    weights = [r["weight"] for r in refiner.run()]
    assert weights[:2] == [0.0, 0.0] and weights[2] > 0


def test_refinement_is_seeded():
    x, y = images()
    runs = [DecoderRefiner(tiny(), SETTINGS, x, y, torch.device("cpu")) for _ in range(2)]
    for r in runs:
        r.run()
    a, b = (r.refined.state_dict() for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_adaptive_weight_is_the_ratio_of_the_gradient_norms_at_the_last_layer():
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 3)
    h = torch.randn(5, 4)
    out = layer(h)
    rec, adv = out.pow(2).mean(), 7.0 * out.sum()
    expected = torch.autograd.grad(rec, layer.weight, retain_graph=True)[0].norm() / (
        torch.autograd.grad(adv, layer.weight, retain_graph=True)[0].norm() + 1e-4
    )
    weight = adaptive_weight(rec, adv, layer.weight, bound=1e4)
    assert torch.isclose(weight, expected)
    assert not weight.requires_grad
    # scaling the adversarial loss scales the weight inversely: the balance, not the loss's size, is set
    assert torch.isclose(adaptive_weight(rec, 2 * adv, layer.weight, bound=1e4), expected / 2, rtol=1e-4)
    # and the bound holds
    assert adaptive_weight(rec, 1e-6 * adv, layer.weight, bound=0.5) == 0.5


def test_hinge_losses():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    # real 2 and fake -2 are past the margin: no loss; real 0.5 costs 0.5, fake 0 costs 1
    assert hinge_discriminator_loss(real, fake) == pytest.approx(0.5 * (0.25 + 0.5))
    assert hinge_generator_loss(fake) == pytest.approx(1.0)


def test_the_patch_discriminator_gives_one_logit_per_patch():
    assert PatchDiscriminator(8, layers=2)(torch.rand(2, 3, 32, 32)).shape == (2, 1, 6, 6)
    assert PatchDiscriminator(8, layers=3)(torch.rand(2, 3, 32, 32)).shape == (2, 1, 2, 2)


def test_a_non_finite_loss_stops_with_one_line():
    x, y = images()
    refiner = DecoderRefiner(tiny(), SETTINGS, x, y, torch.device("cpu"))
    with torch.no_grad():
        refiner.model.out.weight.fill_(float("nan"))
    with pytest.raises(RefinementError, match="non-finite refinement loss at step 1 .*nothing is kept.*Fix: lower"):
        refiner.run()


def test_a_killed_refinement_resumes_to_the_weights_of_one_that_never_stopped(tmp_path):
    x, y = images(40)
    cfg = refine_params(steps=8, batch_size=8, delay=2, checkpoint_every=2)  # 5 batches an epoch: resumes in the 2nd
    whole = DecoderRefiner(tiny(), cfg, x, y, torch.device("cpu"))
    whole.run()
    checkpoint = tmp_path / "refine_last.pt"
    first = DecoderRefiner(tiny(), cfg.model_copy(update={"steps": 6}), x, y, torch.device("cpu"), checkpoint, "key")
    first.run()  # "killed" after its checkpoint at step 6
    resumed = DecoderRefiner(tiny(), cfg, x, y, torch.device("cpu"), checkpoint, "key")
    assert resumed.try_resume() and resumed.step == 6
    torch.manual_seed(123)  # whatever the global generator holds, the run is keyed on its own seeds
    resumed.run()
    a, b = whole.refined.state_dict(), resumed.refined.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in resumed.history] == [2, 4, 6, 8]
    other = DecoderRefiner(tiny(), cfg, x, y, torch.device("cpu"), checkpoint, "other inputs")
    assert not other.try_resume()


def test_sample_decodes_only_a_refinement_of_the_model_the_prior_was_fitted_on(tmp_path, monkeypatch):
    from cvae_pipeline.data.sources import file_checksum
    from cvae_pipeline.errors import PipelineError
    from cvae_pipeline.models.artifact import save_trained_model
    from cvae_pipeline.refinement.artifact import load_decoding_model

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    params = model_params(backbone="mlp", width=8, latent_dim=8, latent_resolution=1).model_dump()
    classes = [str(c) for c in range(10)]
    trained, refined = Path("models/model.pt"), Path("models/refined.pt")
    with pytest.raises(PipelineError, match=r"models/model.pt: missing; run `dvc repro train`"):
        load_decoding_model()
    save_trained_model(trained, tiny("mlp"), params, classes)
    with pytest.raises(PipelineError, match=r"models/refined.pt: missing; run `dvc repro refine`"):
        load_decoding_model()
    shutil.copyfile(trained, refined)  # refine off: a byte copy
    assert load_decoding_model()[2] == file_checksum(trained, "sha256")
    save_trained_model(refined, tiny("mlp"), params, classes, refined_from=file_checksum(trained, "sha256"))
    assert load_decoding_model()[1] == classes
    torch.manual_seed(1)  # another training: the refinement above is not of it
    save_trained_model(trained, build_model(model_params(**{**params}), 10), params, classes)
    with pytest.raises(PipelineError, match=r"refined.pt was made from another models/model.pt.*`dvc repro refine`"):
        load_decoding_model()
