"""The logged model as users call it: ``mlflow.pyfunc.load_model`` and a real ``mlflow models serve``."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from archives import CLASSES
from conftest import BIN, clean_env, free_port, model_params, running_server
from mlflow.exceptions import MlflowException

from cvae_pipeline.expost import ClassGMM
from cvae_pipeline.models import build_model
from cvae_pipeline.models.artifact import load_trained_model, save_trained_model
from cvae_pipeline.serving import log_generator, parse_labels


def test_labels_are_names_indices_or_a_label_column():
    assert parse_labels(["cat", 9, "0", np.int64(2)], CLASSES).tolist() == [3, 9, 0, 2]
    assert parse_labels(pd.DataFrame({"label": ["ship", 1]}), CLASSES).tolist() == [8, 1]
    assert parse_labels(np.array([4, 5]), CLASSES).tolist() == [4, 5]


@pytest.mark.parametrize(
    "bad, message",
    [
        (["dragon"], "unknown class label 'dragon'"),
        ([10], "unknown class label 10"),
        ([-1], "unknown class label -1"),
        ([True], "unknown class label True"),
        ([], "no labels given"),
        (pd.DataFrame({"klass": ["cat"]}), "needs a 'label' column"),
        ("cat", "must be class labels"),
    ],
)
def test_bad_labels_name_the_problem(bad, message):
    with pytest.raises(MlflowException, match=message):
        parse_labels(bad, CLASSES)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[str, Path, str]:
    """(tracking URI, folder, experiment id) of a store holding a tiny CVAE's ``model.pt``."""
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    params = model_params(backbone="mlp", latent_resolution=1, width=16, latent_dim=4)
    save_trained_model(root / "model.pt", build_model(params, len(CLASSES)), params.model_dump(), CLASSES)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        experiment = mlflow.create_experiment("serving", artifact_location=(root / "artifacts").as_uri())
    finally:
        mlflow.set_tracking_uri(previous)
    return uri, root, experiment


def log_in(store, **kwargs) -> str:
    """Log the store's model as the pipeline logs it; its model URI."""
    uri, root, experiment = store
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run(experiment_id=experiment):
            return log_generator(root / "model.pt", CLASSES, **kwargs).model_uri
    finally:
        mlflow.set_tracking_uri(previous)


@pytest.fixture(scope="module")
def logged_model(store) -> tuple[str, str]:
    """(tracking URI, model URI) of a tiny CVAE logged as the training stage logs it (no GMM)."""
    return store[0], log_in(store)


def test_pyfunc_generates_seeded_images_for_names_and_indices(logged_model):
    uri, model_uri = logged_model
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(model_uri)
    images = model.predict(["cat", 3, "truck"], params={"seed": 7})
    assert images.shape == (3, 3, 32, 32) and images.dtype == np.float32
    assert 0 <= images.min() and images.max() <= 1
    assert np.array_equal(images, model.predict(["cat", 3, "truck"], params={"seed": 7}))
    # the name and the index mean the same class
    assert np.array_equal(model.predict(["cat"], params={"seed": 7}), model.predict([3], params={"seed": 7}))
    assert not np.array_equal(images, model.predict(["cat", 3, "truck"], params={"seed": 8}))
    cold = model.predict(["cat"], params={"seed": 7, "temperature": 0.01})
    assert not np.array_equal(cold[0], images[0])
    with pytest.raises(MlflowException, match="temperature must be > 0"):
        model.predict(["cat"], params={"temperature": 0.0})


def toy_gmm(path: Path) -> ClassGMM:
    """A per-class GMM on the toy model's 4-d latents, saved to ``path`` the way the sample stage ships it."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(len(CLASSES)), 20)
    gmm = ClassGMM.fit(rng.normal(labels[:, None] * 3.0, 0.5, size=(len(labels), 4)), labels, len(CLASSES), 2)
    gmm.save(path)
    return gmm


def test_generator_with_a_gmm_draws_its_latents_from_it(store, tmp_path):
    """What the sample stage logs with ``sample.latents: gmm``: served images are the evaluated kind."""
    gmm = toy_gmm(tmp_path / "latent_gmm.npz")
    mlflow.set_tracking_uri(store[0])
    served = mlflow.pyfunc.load_model(log_in(store, name="generator", latent_gmm=tmp_path / "latent_gmm.npz"))
    assert served.metadata.metadata["latents"] == "ex-post per-class GMM"
    model, _ = load_trained_model(store[1] / "model.pt", torch.device("cpu"))
    labels = torch.tensor([3, 9, 0])

    def direct(latents):
        return model.sample(labels, generator=torch.Generator().manual_seed(5), latents=latents).numpy()

    images = served.predict(["cat", "truck", 0], params={"seed": 5})
    assert np.allclose(images, direct(gmm), atol=1e-6)  # the GMM is the default
    assert np.allclose(served.predict([3, 9, 0], params={"seed": 5, "latents": "prior"}), direct(None), atol=1e-6)
    assert not np.allclose(images, direct(None), atol=1e-3)
    with pytest.raises(MlflowException, match="latents must be 'gmm' or 'prior'"):
        served.predict(["cat"], params={"latents": "flow"})
    without = mlflow.pyfunc.load_model(log_in(store))
    assert without.metadata.metadata["latents"] == "model prior"
    with pytest.raises(MlflowException, match="ships no GMM"):
        without.predict(["cat"], params={"latents": "gmm"})


def test_generator_serves_the_temperature_its_samples_were_scored_at(store, tmp_path):
    """The sample stage logs its generator with ``sample.temperature``: a request without a temperature
    gets that one (the scored images), a request with one gets what it asks for."""
    gmm = toy_gmm(tmp_path / "latent_gmm.npz")
    mlflow.set_tracking_uri(store[0])
    served = mlflow.pyfunc.load_model(
        log_in(store, name="generator", latent_gmm=tmp_path / "latent_gmm.npz", temperature=0.85)
    )
    assert served.metadata.metadata["default_temperature"] == 0.85
    model, _ = load_trained_model(store[1] / "model.pt", torch.device("cpu"))

    def direct(temperature):
        return model.sample(
            torch.tensor([3, 9]), temperature, generator=torch.Generator().manual_seed(5), latents=gmm
        ).numpy()

    images = served.predict(["cat", "truck"], params={"seed": 5})
    assert np.allclose(images, direct(0.85), atol=1e-6) and not np.allclose(images, direct(1.0), atol=1e-3)
    assert np.allclose(served.predict(["cat", "truck"], params={"seed": 5, "temperature": 1.0}), direct(1.0), atol=1e-6)


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@pytest.mark.slow
def test_mlflow_models_serve_answers_labels_with_images_and_bad_requests_with_400(logged_model, tmp_path):
    uri, model_uri = logged_model
    port = free_port()
    env = clean_env(MLFLOW_TRACKING_URI=uri, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    command = [
        str(BIN / "mlflow"),
        "models",
        "serve",
        "-m",
        model_uri,
        "--env-manager",
        "local",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
    ]
    with running_server(command, f"http://127.0.0.1:{port}/ping", tmp_path / "serve.log", env):
        url = f"http://127.0.0.1:{port}/invocations"
        status, body = post(url, {"inputs": ["cat", 1], "params": {"seed": 1}})
        assert status == 200, body
        assert np.asarray(body["predictions"]).shape == (2, 3, 32, 32)
        status, body = post(url, {"dataframe_records": [{"label": "ship"}], "params": {"temperature": 0.5}})
        assert status == 200 and np.asarray(body["predictions"]).shape == (1, 3, 32, 32)
        status, body = post(url, {"inputs": ["dragon"]})
        assert 400 <= status < 500 and "unknown class label 'dragon'" in body.get("message", ""), (status, body)
