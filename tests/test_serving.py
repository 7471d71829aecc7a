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

from cvae_pipeline.data.sources import file_checksum
from cvae_pipeline.models import build_model
from cvae_pipeline.models.artifact import load_trained_model, save_trained_model
from cvae_pipeline.precision import Precision
from cvae_pipeline.prior import DiffusionPrior, load_prior, save_prior
from cvae_pipeline.prior.diffusion import GaussianDiffusion, MLPDenoiser
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
    for bad in ({"temperature": 0.0}, {"temperature": float("nan")}, {"steps": 0}, {"guidance": -1.0}):
        with pytest.raises(MlflowException, match=f"{next(iter(bad))} must be"):
            model.predict(["cat"], params=bad)


def toy_prior(store, path: Path) -> DiffusionPrior:
    """A diffusion prior over the toy model's 4-d latents (random weights: what matters here is that
    the served model draws from it exactly as sampling does), saved the way the prior stage saves it."""
    torch.manual_seed(0)
    denoiser = MLPDenoiser(4, len(CLASSES), 16, 2)
    for layer in (denoiser.output, denoiser.final_modulation[1]):
        torch.nn.init.normal_(layer.weight, std=0.3)
    prior = DiffusionPrior(denoiser.eval(), GaussianDiffusion(100, "v"), torch.full((4,), 0.5), torch.full((4,), 2.0))
    save_prior(path, "diffusion", file_checksum(store[1] / "model.pt", "sha256"), CLASSES, prior)
    return load_prior(path, file_checksum(store[1] / "model.pt", "sha256"))[1]


def test_generator_with_a_prior_draws_its_latents_from_it(store, tmp_path):
    """What the sample stage logs with ``sample.latents: fitted``: the served images are the evaluated
    ones, drawn by the shipped prior at the scored steps and guidance; a request may override them."""
    prior = toy_prior(store, tmp_path / "prior.pt")
    mlflow.set_tracking_uri(store[0])
    scored = {"temperature": 0.9, "solver": "dpmpp_2m", "steps": 7, "guidance": 2.5}
    uri = log_in(store, name="generator", prior_file=tmp_path / "prior.pt", settings=scored, described="toy prior")
    served = mlflow.pyfunc.load_model(uri)
    assert served.metadata.metadata["latents"] == "toy prior" and served.metadata.metadata["defaults"] == scored | {
        "precision": "fp32"
    }
    model, _ = load_trained_model(store[1] / "model.pt", torch.device("cpu"))
    labels = torch.tensor([3, 9, 0])

    def direct(latents, temperature=0.9):
        return model.sample(labels, temperature, generator=torch.Generator().manual_seed(5), latents=latents).numpy()

    images = served.predict(["cat", "truck", 0], params={"seed": 5})
    assert np.allclose(images, direct(prior.sampler(7, 2.5, "dpmpp_2m")), atol=1e-6)  # the scored settings
    assert not np.allclose(images, direct(prior.sampler(7, 1.0, "dpmpp_2m")), atol=1e-3)  # guidance matters
    assert not np.allclose(images, direct(prior.sampler(7, 2.5, "ddim")), atol=1e-3)  # and so does the solver
    asked = served.predict(
        [3, 9, 0], params={"seed": 5, "solver": "ddim", "steps": 3, "guidance": 0.0, "temperature": 1.0}
    )
    assert np.allclose(asked, direct(prior.sampler(3, 0.0, "ddim"), 1.0), atol=1e-6)
    with pytest.raises(MlflowException, match="solver must be one of ddim, dpmpp_2m, got 'euler'"):
        served.predict(["cat"], params={"solver": "euler"})
    assert np.allclose(served.predict([3, 9, 0], params={"seed": 5, "latents": "model"}), direct(None), atol=1e-6)


def test_generator_serves_in_the_precision_its_samples_were_drawn_in(store, tmp_path):
    """sample chose bf16 (a native-bf16 machine): the served model computes in bf16 too, so its draws are
    the scored ones; they differ from fp32's by bf16's rounding only."""
    prior = toy_prior(store, tmp_path / "prior.pt")
    mlflow.set_tracking_uri(store[0])
    settings = {"temperature": 1.0, "solver": "ddim", "steps": 5, "guidance": 1.0, "precision": "bf16"}
    uri = log_in(store, name="generator", prior_file=tmp_path / "prior.pt", settings=settings, described="toy prior")
    served = mlflow.pyfunc.load_model(uri)
    model, _ = load_trained_model(store[1] / "model.pt", torch.device("cpu"))
    labels = torch.tensor([3, 9, 0])

    def direct(dtype: str):
        with Precision(dtype).autocast(torch.device("cpu")):
            return model.sample(labels, generator=torch.Generator().manual_seed(5), latents=prior.sampler(5, 1.0))

    images = served.predict([3, 9, 0], params={"seed": 5})
    assert np.array_equal(images, direct("bf16").numpy())
    assert not np.array_equal(images, direct("fp32").numpy())
    assert np.allclose(images, direct("fp32").numpy(), atol=0.05)
    with pytest.raises(MlflowException, match="latents must be 'fitted' or 'model'"):
        served.predict(["cat"], params={"latents": "flow"})
    without = mlflow.pyfunc.load_model(log_in(store))
    assert without.metadata.metadata["latents"] == "model prior"
    with pytest.raises(MlflowException, match="ships no fitted prior"):
        without.predict(["cat"], params={"latents": "fitted"})


def post(url: str, body, content_type: str = "application/json") -> tuple[int, dict]:
    """POST ``body`` (JSON-encoded unless bytes); the status and the decoded answer."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        answer = exc.read()
        try:
            return exc.code, json.loads(answer or b"{}")
        except ValueError:
            return exc.code, {"message": answer.decode(errors="replace")}


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its children (the server's workers), in MB."""
    import psutil

    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20


@pytest.fixture(scope="module")
def served(store, tmp_path_factory):
    """A real ``mlflow models serve`` of a generator that ships a diffusion prior, as sample logs it:
    (invocations URL, server process)."""
    folder = tmp_path_factory.mktemp("served")
    toy_prior(store, folder / "prior.pt")
    settings = {"temperature": 1.0, "steps": 10, "guidance": 3.0}
    model_uri = log_in(store, name="generator", prior_file=folder / "prior.pt", settings=settings)
    port = free_port()
    env = clean_env(MLFLOW_TRACKING_URI=store[0], PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    command = [str(BIN / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local"]
    command += ["-h", "127.0.0.1", "-p", str(port)]
    with running_server(command, f"http://127.0.0.1:{port}/ping", folder / "serve.log", env) as server:
        yield f"http://127.0.0.1:{port}/invocations", server


@pytest.mark.slow
def test_mlflow_models_serve_answers_labels_with_images_and_bad_requests_with_400(served):
    url, _ = served
    status, body = post(url, {"inputs": ["cat", 1], "params": {"seed": 1}})
    assert status == 200, body
    assert np.asarray(body["predictions"]).shape == (2, 3, 32, 32)
    status, body = post(url, {"dataframe_records": [{"label": "ship"}], "params": {"temperature": 0.5}})
    assert status == 200 and np.asarray(body["predictions"]).shape == (1, 3, 32, 32)
    status, body = post(url, {"inputs": ["dragon"]})
    assert 400 <= status < 500 and "unknown class label 'dragon'" in body.get("message", ""), (status, body)


#: the load: requests from concurrent clients (CVAE_SERVING_REQUESTS overrides the count)
LOAD_REQUESTS, LOAD_CLIENTS = int(os.environ.get("CVAE_SERVING_REQUESTS", 1000)), 8
#: malformed or out-of-range requests, each answered 4xx with a message naming the problem
BAD_REQUESTS = {
    "malformed JSON": (b'{"inputs": ["cat"', "application/json", ""),
    "empty body": (b"", "application/json", ""),
    "not JSON": (b"cat,dog", "text/plain", ""),
    "no inputs": ({}, "application/json", ""),
    "unknown label": ({"inputs": ["dragon"]}, "application/json", "unknown class label"),
    "negative index": ({"inputs": [-1]}, "application/json", "unknown class label"),
    "huge index": ({"inputs": [10**20]}, "application/json", ""),
    "no labels": ({"inputs": []}, "application/json", ""),
    "oversized": ({"inputs": [0] * 1001}, "application/json", "at most 1000"),
    "NaN temperature": (b'{"inputs": ["cat"], "params": {"temperature": NaN}}', "application/json", ""),
    "huge temperature": ({"inputs": ["cat"], "params": {"temperature": 1e308}}, "application/json", "temperature"),
    "huge seed": ({"inputs": ["cat"], "params": {"seed": 2**70}}, "application/json", ""),
    "text seed": ({"inputs": ["cat"], "params": {"seed": "abc"}}, "application/json", ""),
    "huge steps": ({"inputs": ["cat"], "params": {"steps": 10**9}}, "application/json", "steps"),
    "unknown latents": ({"inputs": ["cat"], "params": {"latents": "flow"}}, "application/json", "latents"),
}


@pytest.mark.slow
def test_the_served_generator_answers_every_request_under_load_and_refuses_bad_ones(served):
    import concurrent.futures
    import time

    from conftest import ROBUSTNESS_FIGURES, tally

    url, server = served
    assert post(url, {"inputs": ["cat"], "params": {"seed": 0}})[0] == 200  # warm
    rss_warm = tree_rss_mb(server.pid)

    def one(i: int) -> tuple[int, float]:
        labels = [CLASSES[(i + k) % 10] for k in range(1 + i % 4)]
        start = time.perf_counter()
        status, body = post(url, {"inputs": labels, "params": {"seed": i}})
        ok = status == 200 and np.asarray(body["predictions"]).shape == (len(labels), 3, 32, 32)
        return ok, time.perf_counter() - start

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(LOAD_CLIENTS) as pool:
        results = list(pool.map(one, range(LOAD_REQUESTS)))
    wall = time.perf_counter() - start
    latencies = np.array([seconds for _, seconds in results]) * 1000
    served_ok = sum(ok for ok, _ in results)
    tally("serving under load", "answered", served_ok)
    tally("serving under load", "failed", LOAD_REQUESTS - served_ok)
    rss_loaded = tree_rss_mb(server.pid)

    answers = {}
    for name, (body, content_type, fragment) in BAD_REQUESTS.items():
        status, answer = post(url, body, content_type)
        answers[name] = status
        assert 400 <= status < 500 and answer.get("message") and fragment in answer["message"], (name, status, answer)
        tally("serving bad requests", "4xx with a message")
    assert post(url, {"inputs": ["cat"], "params": {"seed": 0}})[0] == 200, "the server did not stay up"
    rss_after = tree_rss_mb(server.pid)
    ROBUSTNESS_FIGURES["serving"] = {
        "requests": LOAD_REQUESTS,
        "clients": LOAD_CLIENTS,
        "answered": served_ok,
        "p50 ms": round(float(np.percentile(latencies, 50)), 1),
        "p99 ms": round(float(np.percentile(latencies, 99)), 1),
        "requests/s": round(LOAD_REQUESTS / wall, 1),
        "server RSS MB warm/loaded/after bad input": f"{rss_warm:.0f}/{rss_loaded:.0f}/{rss_after:.0f}",
    }
    assert served_ok == LOAD_REQUESTS
    # bounded: a burst of requests and an oversized one cost at most a few answers' worth of memory
    assert rss_after < rss_warm + 500, ROBUSTNESS_FIGURES["serving"]
