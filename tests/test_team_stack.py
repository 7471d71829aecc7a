"""A team's stack for real, on loopback: the pipeline against an MLflow server with basic auth, its
runs in PostgreSQL and its artifacts in a SeaweedFS S3 bucket; serving from its registry;
credentials enforced; ``mlflow gc``; the database or the object store going down; the UI in a real
browser. The stack is the session's ``team_stack`` fixture (``cvae team up`` / ``cvae team down``).

The DVC half (``dvc push``/``pull`` and ``dvc exp push``/``pull`` through that bucket) is in
test_pipeline_dvc.py, on its end-to-end repository."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import (
    BIN,
    REPO,
    TINY_MODEL,
    TINY_PRIOR,
    TINY_TRAIN,
    clean_env,
    free_port,
    run_stage,
    running_server,
    sh,
    tally,
    train_workspace,
)

from cvae_pipeline.team.objectstore import SERVICES
from cvae_pipeline.team.stack import ARTIFACTS_PREFIX, DATABASES, READER, SECRETS, WRITER, Stack
from cvae_pipeline.team.tracking_server import basic_auth

PIPELINE = ("train", "prior", "refine", "fid_reference", "sample", "evaluate")


def call(
    stack, endpoint: str, body: dict | None = None, user: str | tuple[str, str] | None = WRITER
) -> tuple[int, dict | str]:
    """A REST call to the stack's server as ``user``, one of the stack's users or (name, password) (None:
    no credentials); (status, JSON or text)."""
    headers = {"Content-Type": "application/json"}
    if user:
        headers["Authorization"] = basic_auth(*(stack.credentials(user) if isinstance(user, str) else user))
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{stack.server.url}/api/2.0/mlflow/{endpoint}", data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def ok(stack, endpoint: str, body: dict | None = None, user: str = WRITER) -> dict:
    status, answer = call(stack, endpoint, body, user)
    assert status == 200, (endpoint, status, answer)
    return answer


def sql(stack, query: str, *args) -> list[tuple]:
    import psycopg

    with psycopg.connect(stack.postgres.uri(DATABASES[0])) as connection:
        return connection.execute(query, args).fetchall()


def tiny_workspace(root: Path, experiment: str = "cvae-cifar10") -> Path:
    ws = train_workspace(root, TINY_MODEL, TINY_TRAIN)
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["prior"].update(TINY_PRIOR)
    params["sample"].update(per_class=3, steps=5)
    params["evaluate"].update(kid_subsets=5, probe_folds=2, iw_samples=2)
    params["mlflow"]["experiment"] = experiment
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return ws


def last_line(result: subprocess.CompletedProcess) -> str:
    return result.stderr.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def pipeline(team_stack, tmp_path_factory) -> Path:
    """train → prior → fid_reference → sample → evaluate as the stack's writer, then sample and evaluate
    again at another guidance (runs of their own, nested under the training's too): the workspace."""
    ws = tiny_workspace(tmp_path_factory.mktemp("team") / "ws")
    for stage in PIPELINE:
        result = run_stage(stage, ws, env=team_stack.exports())
        assert result.returncode == 0, f"{stage}:\n{result.stdout}\n{result.stderr}"
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["sample"]["guidance"] = 1.5
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for stage in ("sample", "evaluate"):
        result = run_stage(stage, ws, env=team_stack.exports())
        assert result.returncode == 0, f"{stage}:\n{result.stdout}\n{result.stderr}"
    return ws


@pytest.mark.slow
def test_pipeline_runs_live_in_postgres_and_their_artifacts_in_the_bucket(team_stack, pipeline):
    assert not (pipeline / "mlflow.db").exists()  # nothing went to the local default store
    trained = json.loads((pipeline / "models" / "mlflow_run.json").read_text())["run_id"]
    experiment = ok(team_stack, "experiments/get-by-name?experiment_name=cvae-cifar10")["experiment"]
    runs = ok(team_stack, "runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
    assert len(runs) == 7 and all(
        r["info"]["status"] == "FINISHED" for r in runs
    )  # train, prior, refine, 2 x (sample, evaluate)

    def of(stage: str) -> dict:
        """The stage's runs by their guidance."""
        found = [r for r in runs if {"key": "stage", "value": stage} in r["data"]["tags"]]
        return {next(p["value"] for p in r["data"]["params"] if p["key"] == "sample.guidance"): r for r in found}

    (training,) = of("train").values()
    assert training["info"]["run_id"] == trained
    evaluations, samplings = of("evaluate"), of("sample")
    assert set(evaluations) == set(samplings) == {"3.0", "1.5"}
    first = evaluations["3.0"]
    metrics = {m["key"]: m["value"] for m in first["data"]["metrics"]}
    assert {"fid", "kid_mean", "class_consistency", "final_train_seconds"} <= set(metrics)
    reported = json.loads((pipeline / "reports" / "metrics.json").read_text())  # the second evaluation's
    assert {m["key"]: m["value"] for m in evaluations["1.5"]["data"]["metrics"]}["fid"] == pytest.approx(
        reported["fid"]
    )

    # the same facts, read from PostgreSQL itself
    rows = sql(team_stack, "SELECT status, experiment_id FROM runs WHERE run_uuid = %s", trained)
    assert rows == [("FINISHED", int(experiment["experiment_id"]))]
    first_id = first["info"]["run_id"]
    fid_rows = sql(team_stack, "SELECT value FROM latest_metrics WHERE run_uuid = %s AND key = 'fid'", first_id)
    assert fid_rows and fid_rows[0][0] == pytest.approx(metrics["fid"])
    versions = sql(team_stack, "SELECT version, run_id FROM model_versions WHERE name = 'cvae-cifar10'")
    assert sorted(run_id for _, run_id in versions) == sorted(r["info"]["run_id"] for r in samplings.values())

    # and the artifacts as objects in the bucket: the runs' files and the logged generator's
    keys = team_stack.objectstore.keys(f"{ARTIFACTS_PREFIX}/{experiment['experiment_id']}/")
    sampled = samplings["3.0"]["info"]["run_id"]
    assert any(k.endswith(f"{sampled}/artifacts/samples/final_grid.png") for k in keys), keys
    assert any(k.endswith(f"{trained}/artifacts/pipeline/params.yaml") for k in keys), keys
    # the generator carries the model file sample decodes with
    assert any(k.endswith("/MLmodel") for k in keys) and any(k.endswith("/refined.pt") for k in keys), keys


@pytest.mark.slow
def test_the_registered_generator_is_served_from_the_team_server(team_stack, pipeline, tmp_path):
    port = free_port()
    env = clean_env(PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **team_stack.exports())
    command = [str(BIN / "mlflow"), "models", "serve", "-m", "models:/cvae-cifar10/1", "--env-manager", "local"]
    command += ["-h", "127.0.0.1", "-p", str(port)]
    with running_server(command, f"http://127.0.0.1:{port}/ping", tmp_path / "serve.log", env):
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": ["cat", 1], "params": {"seed": 1}}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            images = np.asarray(json.loads(response.read())["predictions"])
    assert images.shape == (2, 3, 32, 32) and np.isfinite(images).all()


def test_the_server_demands_credentials_and_write_permission(team_stack):
    status, _ = call(team_stack, "experiments/search", {"max_results": 1}, user=None)
    assert status == 401
    experiment_id = ok(team_stack, "experiments/create", {"name": f"auth-{time.time_ns()}"})["experiment_id"]
    run_id = ok(team_stack, "runs/create", {"experiment_id": experiment_id})["run"]["info"]["run_id"]
    metric = {"run_id": run_id, "key": "m", "value": 1.0, "timestamp": 0, "step": 0}
    status, answer = call(team_stack, "runs/log-metric", metric, user=READER)
    assert status == 403, answer
    ok(team_stack, "runs/get?run_id=" + run_id, user=READER)  # reading is allowed
    ok(team_stack, "runs/log-metric", metric, user=WRITER)


def test_a_changed_password_takes_effect_at_once_despite_the_credential_cache(team_stack):
    """The server caches good credentials (``auth_cache_ttl_seconds``): a password once accepted must
    still stop working the moment an admin changes it, and a wrong one must never be let in."""
    name, old, new = f"rotated-{time.time_ns()}", "first-password-1", "second-password-2"
    team_stack.server.request("/api/2.0/mlflow/users/create", {"username": name, "password": old})

    def status(password: str) -> int:
        return call(team_stack, "experiments/search?max_results=1", user=(name, password))[0]

    assert [status(old), status(old), status(new)] == [200, 200, 401]  # the second one from the cache
    team_stack.server.request(  # as the admin; raises unless the server accepts it
        "/api/2.0/mlflow/users/update-password", {"username": name, "password": new}, method="PATCH"
    )
    assert [status(old), status(new)] == [401, 200]


def test_a_wrong_password_stops_a_stage_in_seconds_naming_the_server_and_the_fix(team_stack, tmp_path):
    ws = tiny_workspace(tmp_path / "ws")
    env = team_stack.exports() | {"MLFLOW_TRACKING_PASSWORD": "not-the-password"}
    start = time.monotonic()
    result = run_stage("train", ws, env=env)
    assert result.returncode == 1 and time.monotonic() - start < 60
    assert last_line(result).startswith(
        f"error: MLflow server {team_stack.server.url} refused the credentials of user 'writer' (401 Unauthorized); "
        "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
    ), result.stderr
    assert "Traceback" not in result.stderr and not (ws / "models" / "model.pt").exists()


def test_a_reader_running_the_pipeline_is_told_it_may_not_write(team_stack, tmp_path):
    name = f"readonly-{time.time_ns()}"
    ok(team_stack, "experiments/create", {"name": name})  # the writer's experiment
    ws = tiny_workspace(tmp_path / "ws", experiment=name)
    result = run_stage("train", ws, env=team_stack.exports(READER))
    assert result.returncode == 1, result.stdout
    assert last_line(result).startswith(
        f"error: MLflow server {team_stack.server.url}: user 'reader' may not write there (403 Permission denied)"
    ), result.stderr
    assert "Traceback" not in result.stderr


def test_mlflow_gc_removes_a_deleted_runs_rows_and_objects(team_stack, tmp_path):
    (tmp_path / "note.txt").write_text("to be collected")
    env = clean_env(**team_stack.exports())
    script = (
        "import mlflow, sys; c = mlflow.MlflowClient(); "
        f"e = c.create_experiment('gc-{time.time_ns()}'); r = c.create_run(e); "
        f"c.log_artifact(r.info.run_id, {str(tmp_path / 'note.txt')!r}); c.log_metric(r.info.run_id, 'm', 1.0); "
        "print(e, r.info.run_id)"
    )
    made = subprocess.run([str(BIN / "python"), "-c", script], env=env, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    experiment_id, run_id = made.stdout.split()[-2:]
    prefix = f"{ARTIFACTS_PREFIX}/{experiment_id}/{run_id}/"
    assert team_stack.objectstore.keys(prefix) and sql(team_stack, "SELECT 1 FROM runs WHERE run_uuid = %s", run_id)

    ok(team_stack, "runs/delete", {"run_id": run_id})
    # gc deletes through the server's artifact proxy (the admin may delete anything), rows in PostgreSQL directly
    admin = clean_env(**team_stack.exports("admin"), PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    gc = [str(BIN / "mlflow"), "gc", "--backend-store-uri", team_stack.postgres.uri(DATABASES[0]), "--run-ids", run_id]
    collected = subprocess.run(gc, env=admin, capture_output=True, text=True, timeout=300)
    assert collected.returncode == 0, collected.stdout + collected.stderr
    assert sql(team_stack, "SELECT 1 FROM runs WHERE run_uuid = %s", run_id) == []
    assert sql(team_stack, "SELECT 1 FROM metrics WHERE run_uuid = %s", run_id) == []
    assert team_stack.objectstore.keys(prefix) == []


def train_while_down(stack, service, ws: Path) -> tuple[subprocess.CompletedProcess, float]:
    """``train`` in ``ws`` as the writer while ``service`` of the stack is stopped, and its seconds;
    ``up`` then restarts what is down, on the same ports, for the tests after this one."""
    service.stop()
    try:
        start = time.monotonic()
        result = run_stage("train", ws, env=stack.exports())
        return result, time.monotonic() - start
    finally:
        stack.up()


def test_postgres_down_fails_a_stage_in_seconds_with_one_line(team_stack, tmp_path):
    ws = tiny_workspace(tmp_path / "ws")
    result, elapsed = train_while_down(team_stack, team_stack.postgres, ws)
    assert result.returncode == 1 and elapsed < 60, (elapsed, result.stderr)
    assert last_line(result).startswith(
        f"error: MLflow server {team_stack.server.url} failed (503: its database is likely down or full)"
    ), result.stderr
    assert "Traceback" not in result.stderr and not (ws / "models" / "model.pt").exists()
    ok(team_stack, "experiments/search", {"max_results": 1})  # the server serves again once it is back
    tally("tracking faults", "PostgreSQL down: one line", seconds=elapsed)


def test_the_object_store_down_fails_the_upload_with_one_line_and_marks_the_run_failed(team_stack, tmp_path):
    name = f"s3-down-{time.time_ns()}"
    ws = tiny_workspace(tmp_path / "ws", experiment=name)
    result, elapsed = train_while_down(team_stack, team_stack.objectstore, ws)
    assert result.returncode == 1 and elapsed < 120, (elapsed, result.stderr)
    assert last_line(result).startswith(
        f"error: MLflow server {team_stack.server.url} failed (500: its artifact store is likely down or full)"
    ), result.stderr
    assert "Traceback" not in result.stderr
    experiment_id = ok(team_stack, "experiments/get-by-name?experiment_name=" + name)["experiment"]["experiment_id"]
    (run,) = ok(team_stack, "runs/search", {"experiment_ids": [experiment_id]})["runs"]
    assert run["info"]["status"] == "FAILED"
    assert team_stack.objectstore.ready()  # and the store is back for the tests after this one
    tally("tracking faults", "S3 store down: one line, run FAILED", seconds=elapsed)


@pytest.mark.slow
def test_the_tracking_server_killed_mid_training_fails_in_seconds_and_the_rerun_resumes_its_run(team_stack, tmp_path):
    """``kill -9`` of the MLflow server (its whole process group) while ``train`` runs: the stage stops
    within seconds with one line; once the server is back, re-running resumes the checkpoint into the
    same run, and that run holds every epoch's metrics, the ones logged before the kill and after."""
    import signal

    epochs = 8  # the kill lands milliseconds after the first checkpoint; an epoch logging to the server takes ~1 s
    name = f"server-killed-{time.time_ns()}"
    ws = tiny_workspace(tmp_path / "ws", experiment=name)
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["train"].update(epochs=epochs, sample_every=epochs)
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    checkpoint = ws / "models" / "checkpoints" / "last.pt"
    train = subprocess.Popen(
        [sys.executable, str(REPO / "stages" / "train.py")],
        cwd=ws,
        env=clean_env(**team_stack.exports()),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while not checkpoint.exists():
            assert train.poll() is None, train.communicate()
            time.sleep(0.01)
        os.killpg(team_stack.state["pids"]["mlflow"], signal.SIGKILL)
        killed = time.monotonic()
        stdout, stderr = train.communicate(timeout=300)
        elapsed = time.monotonic() - killed
    finally:
        train.kill()
        team_stack.up()  # the server again, on the same port
    assert train.returncode == 1 and elapsed < 60, (elapsed, stderr[-2000:])
    assert stderr.strip().splitlines()[-1].startswith(f"error: MLflow tracking store {team_stack.server.url}"), stderr
    assert "Traceback" not in stderr
    trained_before = torch.load(checkpoint, weights_only=True)["epoch"]
    assert 1 <= trained_before < epochs, "the kill did not land mid-training"

    again = run_stage("train", ws, env=team_stack.exports())
    assert again.returncode == 0, again.stderr
    assert f"after epoch {trained_before}" in again.stdout  # resumed, not restarted
    experiment_id = ok(team_stack, "experiments/get-by-name?experiment_name=" + name)["experiment"]["experiment_id"]
    (run,) = ok(team_stack, "runs/search", {"experiment_ids": [experiment_id]})["runs"]
    assert run["info"]["run_id"] == json.loads((ws / "models" / "mlflow_run.json").read_text())["run_id"]
    assert run["info"]["status"] == "FINISHED"
    history = ok(team_stack, f"metrics/get-history?run_id={run['info']['run_id']}&metric_key=train_objective")
    assert sorted(m["step"] for m in history["metrics"]) == list(range(1, epochs + 1)), "epochs' metrics were lost"
    tally("tracking server killed mid-training", "one line in seconds, resumed into its run, no epoch lost")


def text(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


def grid_cells(grid) -> dict[tuple[int, int], str]:
    """The rendered cells of a react-virtualized grid by (row, column), from their absolute positions."""
    from selenium.webdriver.common.by import By

    cells = {}
    for cell in grid.find_elements(By.XPATH, ".//*[@role='rowgroup']/*"):
        box = {k: float(v) for k, v in re.findall(r"(top|left|width|height): ([\d.]+)px", cell.get_attribute("style"))}
        cells[round(box["top"] / box["height"]), round(box["left"] / box["width"])] = cell.get_attribute(
            "textContent"
        ).strip()
    return cells


def metric_row(driver, key: str, runs: int = 2) -> list[float] | None:
    """The values of metric ``key`` in the compare view's metrics table, or None while it is not rendered.
    The table is two virtualised grids side by side (the names; the values, one column per run): both are
    scrolled until the name's row is rendered in both (React re-renders them meanwhile: found afresh)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    for _ in range(60):
        try:
            links = driver.find_elements(By.XPATH, "//a[@title='Plot chart']")
            if not links:
                return None
            names_grid = links[0].find_element(By.XPATH, "./ancestor::*[@role='grid'][1]")
            values_grid = names_grid.find_element(By.XPATH, "../../*[2]//*[@role='grid']")
            rows = {name: row for (row, _), name in grid_cells(names_grid).items()}
            values = grid_cells(values_grid)
            if key in rows and all((rows[key], col) in values for col in range(runs)):
                return [float(values[rows[key], col]) for col in range(runs)]
            for grid in (names_grid, values_grid):
                driver.execute_script("arguments[0].scrollTop += 200", grid)
        except StaleElementReferenceException:
            continue
    return None


def chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def headless_chrome(tmp_path: Path, headers: dict[str, str] | None = None):
    """A headless Chromium driven by Selenium, sending ``headers`` with every request the page makes (the
    browser's basic-auth prompt cannot be answered headless)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1600,1000",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    if headers:
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": headers})
    return driver


def plot_axes(driver, wait, params: list[str] | None, metrics: list[str]) -> None:
    """As a user would in the compare view: close the assistant panel, put exactly ``params`` (None: leave
    MLflow's choice) and ``metrics`` on the parallel-coordinates plot (its selectors: params, then metrics)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    for close in driver.find_elements(By.CSS_SELECTOR, "button[data-component-id$='assistant.chat_panel.close']"):
        close.click()
    boxes = driver.find_elements(By.CSS_SELECTOR, "input[role='combobox']")[:2]
    for box, keys in zip(boxes, (params, metrics)):
        if keys is None:
            continue
        selector = box.find_element(By.XPATH, "./ancestor::div[contains(@class, 'select-selector')][1]")
        for remove in selector.find_elements(By.CSS_SELECTOR, "[class*='selection-item-remove']"):
            driver.execute_script("arguments[0].click();", remove)
        for key in keys:
            box.send_keys(key)
            option = f"//*[contains(@class, 'select-item-option') and @title='{key}']"
            wait.until(lambda d, option=option: d.find_elements(By.XPATH, option))
            box.send_keys(Keys.ENTER)
        box.send_keys(Keys.ESCAPE)
    for key in (params or []) + metrics:
        wait.until(
            lambda d, key=key: d.find_elements(By.XPATH, f"//*[local-name()='text' and @data-unformatted='{key}']")
        )


@pytest.mark.slow
@pytest.mark.skipif(
    chromium() is None, reason="no chromium + chromedriver (`apt-get install chromium chromium-driver`; .ci/run does)"
)
def test_the_mlflow_ui_lists_both_runs_with_their_fid_and_compares_them(team_stack, pipeline, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    experiment_id = ok(team_stack, "experiments/get-by-name?experiment_name=cvae-cifar10")["experiment"][
        "experiment_id"
    ]
    everything = ok(team_stack, "runs/search", {"experiment_ids": [experiment_id]})["runs"]
    runs = [r for r in everything if any(m["key"] == "fid" for m in r["data"].get("metrics", []))]  # the evaluations
    fids = [next(m["value"] for m in r["data"]["metrics"] if m["key"] == "fid") for r in runs]
    driver = headless_chrome(tmp_path, {"Authorization": basic_auth(*team_stack.credentials(READER))})
    try:
        wait = WebDriverWait(driver, 90)
        driver.get(f"{team_stack.server.url}/#/experiments/{experiment_id}/runs")
        (parent,) = [r for r in everything if not any(t["key"] == "mlflow.parentRunId" for t in r["data"]["tags"])]
        wait.until(lambda d: parent["info"]["run_name"] in text(d))
        for expander in driver.find_elements(By.CSS_SELECTOR, "button[data-component-id*='runnamecellrenderer']"):
            driver.execute_script("arguments[0].click();", expander)  # unfold the nested runs
        wait.until(lambda d: all(r["info"]["run_name"] in text(d) for r in runs))
        driver.save_screenshot(str(tmp_path / "runs.png"))

        ids = urllib.parse.quote(json.dumps([r["info"]["run_id"] for r in runs]))
        experiments = urllib.parse.quote(json.dumps([experiment_id]))
        driver.get(f"{team_stack.server.url}/#/compare-runs?runs={ids}&experiments={experiments}")
        wait.until(lambda d: "Comparing 2 Runs" in text(d))
        shown = wait.until(lambda d: metric_row(d, "fid"))
        compared = text(driver)
        plot_axes(driver, wait, None, ["fid"])
    finally:
        driver.quit()
    assert all(r["info"]["run_name"] in compared for r in runs)
    assert sorted(shown) == pytest.approx(sorted(fids), rel=1e-3)  # the metrics table rounds to 2 decimals


@pytest.mark.slow
@pytest.mark.skipif(
    chromium() is None or not os.environ.get("CVAE_UI_STORE"),
    reason="needs chromium and CVAE_UI_STORE=<a checkout whose mlflow.db holds a guidance sweep> (docs/experiments.md)",
)
def test_the_mlflow_ui_plots_fid_against_guidance_from_a_real_store(tmp_path):
    """How docs/img/mlflow-compare.png is made: the MLflow UI, served over a real store (the SQLite store of
    the checkout ``CVAE_UI_STORE`` names, after a ``sample.guidance`` sweep of its trained model), compares the
    sweep's evaluations: FID against guidance on the parallel-coordinates plot, the values the store holds.
    No CI machine has a trained model's sweep, so CI skips it; the screenshot goes to ``CVAE_UI_SCREENSHOTS``."""
    from mlflow.tracking import MlflowClient
    from selenium.webdriver.support.ui import WebDriverWait

    store = f"sqlite:///{Path(os.environ['CVAE_UI_STORE']).resolve() / 'mlflow.db'}"
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("cvae-cifar10")
    evaluations = client.search_runs(
        [experiment.experiment_id], "metrics.fid > 0 and attributes.status = 'FINISHED'", order_by=["start_time DESC"]
    )

    # one sweep: the newest evaluation of each guidance among those whose every other param is the newest
    # evaluation's (the same trained model, prior, sample size), so another experiment on the same training
    # run (a longer prior, more samples) cannot slip into the picture
    def others(run) -> dict:
        return {k: v for k, v in run.data.params.items() if k != "sample.guidance"}

    newest = others(evaluations[0])
    sweep: dict[str, object] = {}
    for run in evaluations:
        if others(run) == newest:
            sweep.setdefault(run.data.params["sample.guidance"], run)
    assert len(sweep) >= 3, f"the newest sweep holds guidance {sorted(sweep)}: run a sweep first"
    runs = list(sweep.values())
    port = free_port()
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", store, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    driver = None
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                time.sleep(1)
        driver = headless_chrome(tmp_path)
        wait = WebDriverWait(driver, 90)
        ids = urllib.parse.quote(json.dumps([r.info.run_id for r in runs]))
        experiments = urllib.parse.quote(json.dumps([experiment.experiment_id]))
        driver.get(f"{url}/#/compare-runs?runs={ids}&experiments={experiments}")
        wait.until(lambda d: f"Comparing {len(runs)} Runs" in text(d))
        shown = wait.until(lambda d: metric_row(d, "fid", len(runs)))
        plot_axes(driver, wait, None, ["fid"])  # params: MLflow shows the ones that differ
        driver.save_screenshot(str(tmp_path / "compare.png"))
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        server.wait(30)
    assert sorted(shown) == pytest.approx(sorted(r.data.metrics["fid"] for r in runs), abs=0.006)
    if target := os.environ.get("CVAE_UI_SCREENSHOTS"):
        shutil.copy(tmp_path / "compare.png", Path(target) / "mlflow-compare.png")


def test_team_env_prints_a_users_exports_and_refuses_a_folder_without_a_stack(team_stack, tmp_path):
    env = clean_env(PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    shown = subprocess.run(
        [str(BIN / "cvae"), "team", "env", str(team_stack.directory), "--user", READER],
        env=env,
        capture_output=True,
        text=True,
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines() == [f"export {k}={v}" for k, v in team_stack.exports(READER).items()]
    assert (team_stack.directory / "stack.json").stat().st_mode & 0o077 == 0  # its secrets are the owner's only
    empty = subprocess.run([str(BIN / "cvae"), "team", "env", str(tmp_path)], env=env, capture_output=True, text=True)
    assert empty.returncode == 1
    assert empty.stderr.strip() == f"error: no team stack runs in {tmp_path}; start it with `make team-up`"


def test_the_dvc_remote_takes_keys_that_begin_with_a_dash(tmp_path):
    """token_urlsafe draws "-" as a first character one time in 64: it must not read as an option."""
    repo = tmp_path / "repo"
    repo.mkdir()
    sh("git", "init", "-q", cwd=repo)
    sh("dvc", "init", "-q", cwd=repo)
    stack = Stack(tmp_path / "stack")
    stack.state = {
        "secrets": {name: "-" + name for name in SECRETS},
        "ports": {"postgres": 1, "mlflow": 2} | {f"s3_{name}": 3 + i for i, name in enumerate(SERVICES)},
    }
    stack.configure_dvc_remote(repo)
    config = (repo / ".dvc" / "config.local").read_text()
    assert "secret_access_key = -s3_secret_key" in config
    assert "access_key_id = -s3_access_key" in config


# -- the doors other than MLflow's and S3's ----------------------------------------------------------
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # + an empty SETTINGS frame


def status_of(method: str, url: str, data: bytes | None = None, headers: dict | None = None) -> int | str:
    """The HTTP status a request without credentials gets, or "unreachable"."""
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return "unreachable"


def grpc_answer(port: int, context=None) -> str:
    """What a gRPC port says to an HTTP/2 connection preface: "http2" (a SETTINGS frame: the server
    talks), or why it does not. ``context``: TLS, with or without a client certificate."""
    import socket
    import ssl

    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            connection = context.wrap_socket(raw, server_hostname="127.0.0.1") if context else raw
            connection.sendall(HTTP2_PREFACE)
            head = connection.recv(9)
        except ssl.SSLError as exc:
            return f"refused ({exc.reason})"
        except (ConnectionError, TimeoutError) as exc:
            return f"refused ({type(exc).__name__})"
    return "http2" if len(head) == 9 and head[3] == 0x4 else f"refused (answered {head[:9]!r})"


def tls_context(folder: Path, certificate: bool):
    """TLS to the stack's gRPC ports, trusting its CA; ``certificate``: present the stack's own."""
    import ssl

    context = ssl.create_default_context(cafile=str(folder / "ca.crt"))
    context.check_hostname = False  # SeaweedFS checks the chain, not names
    context.set_alpn_protocols(["h2"])  # gRPC refuses a TLS connection that does not offer h2
    if certificate:
        context.load_cert_chain(folder / "seaweedfs.crt", folder / "seaweedfs.key")
    return context


def chunk_of(stack, key: str) -> str:
    """The volume file id of an object's first chunk, asked of the filer over gRPC by ``weed shell`` from
    the store's folder (whose security.toml holds the stack's certificate: the one client let in)."""
    store = stack.objectstore
    shell = [str(BIN / "weed"), "shell", f"-master=127.0.0.1:{store.ports['master']}"]
    shell.append(f"-filer=127.0.0.1:{store.ports['filer']}")
    listed = subprocess.run(
        shell,
        input=f"fs.meta.cat /buckets/{store.bucket}/{key}\n",
        cwd=store.directory,
        capture_output=True,
        text=True,
        timeout=120,
    )
    found = re.search(r'"fileId":\s*"(\d+,[0-9a-f]+)"', listed.stdout)
    assert found, listed.stdout + listed.stderr
    return found.group(1)


def test_only_the_s3_and_mlflow_ports_let_a_stranger_in(team_stack, tmp_path):
    """Every other door of the stack, tried without a credential as any local process could: the
    filer's list/read/write/delete, the master's assign, lookup and collection delete, the volume
    server's read/write/delete of a chunk an MLflow artifact upload wrote, each gRPC port, PostgreSQL.
    Each is refused while the artifact stays readable through MLflow's proxy, unchanged."""
    import jwt
    import psycopg

    secret = os.urandom(3000)  # one chunk
    (tmp_path / "model.bin").write_bytes(secret)
    env = clean_env(**team_stack.exports())
    script = (
        "import mlflow; c = mlflow.MlflowClient(); "
        f"e = c.create_experiment('doors-{time.time_ns()}'); r = c.create_run(e); "
        f"c.log_artifact(r.info.run_id, {str(tmp_path / 'model.bin')!r}); print(r.info.run_id)"
    )
    made = subprocess.run([str(BIN / "python"), "-c", script], env=env, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    run_id = made.stdout.split()[-1]
    (key,) = [k for k in team_stack.objectstore.keys(ARTIFACTS_PREFIX) if k.endswith(f"{run_id}/artifacts/model.bin")]
    fid = chunk_of(team_stack, key)

    store = team_stack.objectstore
    bucket = f"/buckets/{store.bucket}"
    master, volume, filer, admin = (
        f"http://127.0.0.1:{store.ports[s]}" for s in ("master", "volume", "filer", "admin")
    )
    tried = {
        "filer list": status_of("GET", f"{filer}{bucket}/", headers={"Accept": "application/json"}),
        "filer read": status_of("GET", f"{filer}{bucket}/{key}"),
        "filer write": status_of(
            "POST",
            f"{filer}{bucket}/{ARTIFACTS_PREFIX}/",
            data=b'--b\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\nintruder\r\n--b--\r\n',
            headers={"Content-Type": "multipart/form-data; boundary=b"},
        ),
        "filer delete": status_of("DELETE", f"{filer}{bucket}/{key}"),
        "master assign": status_of("GET", f"{master}/dir/assign"),
        "master lookup": status_of("GET", f"{master}/dir/lookup?fileId={fid}"),
        "master collection delete": status_of("GET", f"{master}/col/delete?collection={store.bucket}"),
        "master volume grow": status_of("GET", f"{master}/vol/grow?count=1"),
        "volume read": status_of("GET", f"{volume}/{fid}"),
        "volume write": status_of("PUT", f"{volume}/{fid}", data=b"replaced"),
        "volume delete": status_of("DELETE", f"{volume}/{fid}"),
        "volume read, a key not the stack's": status_of(
            "GET", f"{volume}/{fid}", headers={"Authorization": "Bearer " + jwt.encode({"fid": fid}, "x" * 32)}
        ),
        "admin api": status_of("GET", f"{admin}/api/cluster/topology"),
    }
    assert all(status in (401, 403, 404, "unreachable") for status in tried.values()), tried

    tls = store.directory / "tls"
    for service in SERVICES:
        grpc_port = store.ports[service] + 10000
        assert grpc_answer(grpc_port) != "http2", service  # plain gRPC
        assert grpc_answer(grpc_port, tls_context(tls, certificate=False)).startswith("refused"), service
        assert grpc_answer(grpc_port, tls_context(tls, certificate=True)) == "http2", service  # the stack's own

    for password in ("", "not-the-password"):
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(team_stack.postgres.uri(DATABASES[0]).replace(team_stack.secrets["postgres"], password))

    # the keys are the stack's: with one the master would sign, the same read goes through
    signed = jwt.encode({"fid": fid, "exp": int(time.time()) + 10}, team_stack.secrets["seaweedfs_volume_read"])
    with urllib.request.urlopen(
        urllib.request.Request(f"{volume}/{fid}", headers={"Authorization": f"Bearer {signed}"}), timeout=10
    ) as response:
        assert response.read() == secret
    # and nothing was changed through a door: the artifact reads back whole through MLflow's proxy
    fetched = subprocess.run(
        [
            str(BIN / "python"),
            "-c",
            f"import mlflow; print(mlflow.artifacts.download_artifacts(run_id={run_id!r}, "
            f"artifact_path='model.bin', dst_path={str(tmp_path / 'back')!r}))",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert fetched.returncode == 0, fetched.stderr
    assert Path(fetched.stdout.split()[-1]).read_bytes() == secret
    assert not [k for k in store.keys(ARTIFACTS_PREFIX) if k.endswith("/x")]


def test_the_stacks_state_is_its_owners_alone(team_stack):
    """Secrets, keys, the store's data and the servers' logs: no other user reaches them. Every entry of
    the state folder is a file or folder of its owner's alone (what lies inside a 0700 folder is out of
    reach whatever its mode); as root the folder itself is 0711, so that the postgres user reaches its
    cluster, and lists nothing."""
    exposed = {path.name: oct(path.stat().st_mode & 0o777) for path in team_stack.directory.iterdir()}
    exposed = {name: mode for name, mode in exposed.items() if int(mode, 8) & 0o077}
    assert exposed == {}, exposed
    assert team_stack.directory.stat().st_mode & 0o066 == 0
    assert (team_stack.objectstore.directory / "data").stat().st_mode & 0o077 == 0


def test_the_reader_writes_nothing_of_anyone_elses_and_may_open_experiments_of_its_own(team_stack):
    """What MLflow's basic auth lets the reader do, as docs/scaling.md states it: read everything; write
    nothing into an experiment or a model another user made; but, like any user, create an experiment
    or a registered model of its own (it then manages that one). MLflow 3 can take away the right to
    create only through workspaces, which this stack does not turn on."""
    experiment_id = ok(team_stack, "experiments/create", {"name": f"writers-{time.time_ns()}"})["experiment_id"]
    run_id = ok(team_stack, "runs/create", {"experiment_id": experiment_id})["run"]["info"]["run_id"]
    model = f"writers-model-{time.time_ns()}"
    ok(team_stack, "registered-models/create", {"name": model})
    metric = {"run_id": run_id, "key": "m", "value": 1.0, "timestamp": 0, "step": 0}

    refused = {
        "log into the writer's run": call(team_stack, "runs/log-metric", metric, READER)[0],
        "start a run in the writer's experiment": call(
            team_stack, "runs/create", {"experiment_id": experiment_id}, READER
        )[0],
        "rename the writer's experiment": call(
            team_stack, "experiments/update", {"experiment_id": experiment_id, "new_name": "taken"}, READER
        )[0],
        "delete the writer's experiment": call(
            team_stack, "experiments/delete", {"experiment_id": experiment_id}, READER
        )[0],
        "register a version of the writer's model": call(
            team_stack, "model-versions/create", {"name": model, "source": "s3://elsewhere", "run_id": run_id}, READER
        )[0],
        "delete the writer's model": call(team_stack, "registered-models/delete", {"name": model}, READER)[0],
    }
    assert set(refused.values()) == {403}, refused
    ok(team_stack, f"experiments/get?experiment_id={experiment_id}", user=READER)  # reading is allowed
    ok(team_stack, f"registered-models/get?name={model}", user=READER)

    own = ok(team_stack, "experiments/create", {"name": f"readers-{time.time_ns()}"}, user=READER)["experiment_id"]
    own_run = ok(team_stack, "runs/create", {"experiment_id": own}, user=READER)["run"]["info"]["run_id"]
    ok(team_stack, "runs/log-metric", metric | {"run_id": own_run}, user=READER)
    ok(team_stack, "registered-models/create", {"name": f"readers-model-{time.time_ns()}"}, user=READER)
