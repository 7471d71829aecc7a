"""End to end as a user drives it: ``dvc repro``, ``dvc exp run`` (in the workspace and queued),
``cvae report``/``compare`` and a DVC remote, in a fresh git repo, on a tiny configuration (a few
hundred images, one epoch) with the real Inception network.

The tests share one repository (module scope) and run in file order: the baseline ``dvc repro``
first, then experiments on top of it."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from archives import CLASSES
from conftest import load_benchmark, make_pipeline_repo, sh, tally

ALL_STAGES = ("download", "prepare", "fid_reference", "train", "prior", "refine", "sample", "evaluate")
#: what the tiny pipeline's samples are drawn from (TINY_PRIOR, 5 steps, the default guidance)
LATENTS = "diffusion prior (MLP 2x32, v-prediction; 5 DPM-Solver++(2M) steps, guidance 3)"


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory) -> Path:
    return make_pipeline_repo(tmp_path_factory.mktemp("e2e"))


def facts(repo: Path) -> dict:
    return json.loads((repo / "reports" / "data.json").read_text())


def mlflow_client(repo: Path):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")


def mlflow_runs(repo: Path, stage: str | None = None) -> list:
    """The runs of the repository's store; ``stage``: only those that stage started."""
    client = mlflow_client(repo)
    experiment = client.get_experiment_by_name("cvae-cifar10")
    runs = client.search_runs([experiment.experiment_id], max_results=5000) if experiment else []
    return [r for r in runs if stage is None or r.data.tags.get("stage") == stage]


def one_run_per_stage(runs: list) -> dict:
    """``{stage: run}`` of one execution of the pipeline (each stage started exactly one run)."""
    by_stage = {r.data.tags["stage"]: r for r in runs}
    assert len(by_stage) == len(runs), [r.info.run_name for r in runs]
    return by_stage


def test_repro_runs_every_stage_then_is_a_no_op(dvc_repo: Path):
    out = sh("dvc", "repro", cwd=dvc_repo)
    for stage in ALL_STAGES:
        assert f"Running stage '{stage}'" in out
    assert facts(dvc_repo)["train"]["per_class"]["cat"] == 9  # 12 minus the 25% validation split
    assert json.loads((dvc_repo / "reports" / "train" / "metrics.json").read_text())["epochs"] == 1
    metrics = json.loads((dvc_repo / "reports" / "metrics.json").read_text())
    for key in ("fid", "kid_mean", "kid_std", "class_consistency", "precision", "recall", "test_neg_elbo_nats"):
        assert np.isfinite(metrics[key]), key
    assert metrics["num_samples"] == 20 and set(metrics["per_class"]) == set(CLASSES)
    runs = one_run_per_stage(mlflow_runs(dvc_repo))
    assert set(runs) == {"train", "prior", "refine", "sample", "evaluate"}
    trained, evaluated, sampled = runs["train"], runs["evaluate"], runs["sample"]
    for stage in ("prior", "refine", "sample", "evaluate"):  # every later stage's run nests under the training's
        assert runs[stage].data.tags["mlflow.parentRunId"] == trained.info.run_id
        assert runs[stage].info.run_name == f"{trained.info.run_name} · {stage}"
        assert runs[stage].data.params["model.backbone"] == "mlp"
    assert evaluated.data.metrics["fid"] == pytest.approx(metrics["fid"])
    assert "final_train_seconds" in evaluated.data.metrics  # what the training cost, beside the scores
    client = mlflow_client(dvc_repo)
    assert "samples/epoch_0001.png" in {a.path for a in client.list_artifacts(trained.info.run_id, "samples")}
    assert "samples/final_grid.png" in {a.path for a in client.list_artifacts(sampled.info.run_id, "samples")}
    assert "prior/samples.png" in {a.path for a in client.list_artifacts(runs["prior"].info.run_id, "prior")}
    assert "prior_val_loss" in runs["prior"].data.metrics and runs["prior"].data.params["prior.kind"] == "diffusion"
    # the refinement: its curves (a row at step 2 and at the last, 3), its grid, the figures of its metrics file
    refined = runs["refine"]
    steps = [m.step for m in client.get_metric_history(refined.info.run_id, "refine_weight")]
    assert steps == [2, 3] and "val_l1_after" in refined.data.metrics
    assert "refine/reconstructions.png" in {a.path for a in client.list_artifacts(refined.info.run_id, "refine")}
    refine_metrics = json.loads((dvc_repo / "reports" / "refine" / "metrics.json").read_text())
    assert refine_metrics["steps"] == 3 and np.isfinite(refine_metrics["val_l1_after"])
    assert (dvc_repo / "models" / "refined.pt").read_bytes() != (dvc_repo / "models" / "model.pt").read_bytes()
    assert not (dvc_repo / "models" / "checkpoints" / "refine_last.pt").exists()
    assert (dvc_repo / "reports" / "samples" / "grid.png").is_file()
    assert {a.path for a in client.list_artifacts(trained.info.run_id, "pipeline")} == {"pipeline/params.yaml"}
    pipeline_files = {a.path for a in client.list_artifacts(evaluated.info.run_id, "pipeline")}
    assert pipeline_files == {"pipeline/dvc.yaml", "pipeline/dvc.lock"}
    # registered where it was logged (the sample stage's run), scored by the evaluation
    (version,) = client.search_model_versions("name='cvae-cifar10'")
    assert version.run_id == sampled.info.run_id and float(version.tags["fid"]) == pytest.approx(
        metrics["fid"], rel=1e-5
    )
    assert version.tags["evaluated_in_run"] == evaluated.info.run_id
    assert version.description.startswith(
        f"FID {metrics['fid']:.2f} (20 samples vs 40 test images; decoder mean, latents from {LATENTS})"
    )
    # the registered model is the generator the sample stage logged with its prior: it serves what was scored
    generator = json.loads((dvc_repo / "data" / "samples" / "generator.json").read_text())
    assert version.source == generator["model_uri"] and generator["version"] == str(version.version)
    logged = client.get_logged_model(generator["model_uri"].removeprefix("models:/"))
    assert logged.source_run_id == sampled.info.run_id and logged.name == "generator"
    assert not (dvc_repo / "models" / "checkpoints" / "last.pt").exists()  # finished stages leave no resume file
    per_class = (dvc_repo / "reports" / "per_class.csv").read_text().splitlines()
    assert per_class[0].startswith("class,") and len(per_class) == 1 + len(CLASSES) + 1

    assert "Data and pipelines are up to date" in sh("dvc", "repro", cwd=dvc_repo)
    metrics = json.loads(sh("dvc", "metrics", "show", "--json", cwd=dvc_repo))
    workspace = next(iter(metrics.values()))["data"]  # keyed "" (workspace) in DVC 3.x
    assert workspace["reports/data.json"]["data"]["train"]["images"] == 90
    assert "val_neg_elbo" in workspace["reports/train/metrics.json"]["data"]
    plots = sh("dvc", "plots", "show", "--json", cwd=dvc_repo)
    assert workspace["reports/prior/metrics.json"]["data"]["kind"] == "diffusion"
    for plot in (
        "reports/per_class.csv",
        "reports/train/history.csv",
        "reports/prior/history.csv",
        "reports/refine/history.csv",
        "reports/refine/reconstructions.png",
        "reports/samples/grid.png",
    ):
        assert plot in plots, plot

    sh("git", "add", "-A", cwd=dvc_repo)
    sh("git", "commit", "-qm", "baseline", cwd=dvc_repo)


def test_prior_sweep_scores_the_workspace_with_either_decoder(dvc_repo: Path, monkeypatch, capsys):
    """``benchmarks/prior_sweep.py`` on a repro'd workspace, as docs/results.md runs it: one row per decoder,
    each a finite FID, and the header names the decoder it scored."""
    monkeypatch.chdir(dvc_repo)
    sweep = load_benchmark("prior_sweep")
    fids = {}
    for decoder, path in (("sample", "models/refined.pt"), ("trained", "models/model.pt")):
        assert sweep.main(["--per-class", "2", "--guidance", "3", "--decoder", decoder]) in (None, 0)
        out = capsys.readouterr().out
        assert f"decoder {path}" in out
        (row,) = [line for line in out.splitlines() if line.startswith("| diffusion g=3")]
        fids[decoder] = float(row.split("|")[2])
    assert all(np.isfinite(list(fids.values())))
    assert fids["sample"] != fids["trained"]  # the tiny refinement changed the decoder


def queue_finished(repo: Path) -> bool:
    status = sh("dvc", "queue", "status", cwd=repo)
    return not any(word in status for word in ("Queued", "Running"))


#: four queued experiments, a grid of train.lr x train.precision as a user queues a sweep: both precisions train
QUEUED = [(lr, precision) for lr in ("0.002", "0.0005") for precision in ("fp32", "auto")]


def test_queued_experiments_run_two_at_a_time_into_the_main_store(dvc_repo: Path):
    before = mlflow_runs(dvc_repo)
    runs_before = {r.info.run_id for r in before}
    lrs, precisions = (",".join(dict.fromkeys(values)) for values in zip(*QUEUED))
    sh("dvc", "exp", "run", "--queue", "-S", f"train.lr={lrs}", "-S", f"train.precision={precisions}", cwd=dvc_repo)
    sh("dvc", "queue", "start", "-j", "2", cwd=dvc_repo)
    deadline = time.monotonic() + 900
    while not queue_finished(dvc_repo):
        assert time.monotonic() < deadline, sh("dvc", "queue", "status", cwd=dvc_repo)
        time.sleep(1)
    status = sh("dvc", "queue", "status", cwd=dvc_repo)
    assert "Failed" not in status, status + "\n".join(
        sh("dvc", "queue", "logs", line.split()[1], cwd=dvc_repo) for line in status.splitlines() if "Failed" in line
    )

    rows = walk_exp_show(json.loads(sh("dvc", "exp", "show", "--json", cwd=dvc_repo)))
    queued = {train_settings(r): r for r in rows}
    assert set(QUEUED) <= set(queued), sorted(queued)
    queued = {key: queued[key] for key in QUEUED}
    for row in queued.values():
        assert np.isfinite(row["metrics"]["reports/metrics.json"]["data"]["fid"])

    new_runs = [r for r in mlflow_runs(dvc_repo) if r.info.run_id not in runs_before]  # the main workspace's store
    trainings = [r for r in new_runs if r.data.tags["stage"] == "train"]
    assert sorted((r.data.params["train.lr"], r.data.params["train.precision"]) for r in trainings) == sorted(QUEUED)
    for run in trainings:
        used, asked = run.data.params["train.precision_used"], run.data.params["train.precision"]
        assert used == "fp32" if asked == "fp32" else used in ("fp32", "bf16"), (asked, used)
    # no metric lost: each queued experiment's runs hold every metric the baseline's hold, with full histories
    baseline = one_run_per_stage(before)
    client = mlflow_client(dvc_repo)

    def points(run) -> int:
        return sum(len(client.get_metric_history(run.info.run_id, key)) for key in run.data.metrics)

    for training in trainings:
        name = training.data.tags["dvc_experiment"]
        assert training.info.run_name == name
        runs = one_run_per_stage([r for r in new_runs if r.data.tags.get("dvc_experiment") == name])
        assert set(runs) == set(baseline)
        for stage, run in runs.items():
            assert run.info.status == "FINISHED", (name, stage)
            assert set(run.data.metrics) == set(baseline[stage].data.metrics), (stage, run.data.metrics)
            assert points(run) == points(baseline[stage]), (name, stage)
            if stage != "train":
                assert run.data.tags["mlflow.parentRunId"] == training.info.run_id
        assert runs["evaluate"].data.params["train.lr"] == training.data.params["train.lr"]
        tally("queued experiments (dvc queue start -j 2)", "complete runs, every metric point logged")
    tally(
        "queued experiments (dvc queue start -j 2)",
        f"metric points per experiment {sum(map(points, baseline.values()))}",
        len(trainings),
    )
    assert not list((dvc_repo / ".dvc" / "tmp" / "exps").glob("*/mlflow.db"))  # no store left in temp copies


def test_workspace_experiments_rerun_only_what_changed(dvc_repo: Path):
    """A change of the training split and the epochs: prepare and everything after it re-run, but not the
    download nor the FID reference (the test split did not change). (That a model-only change leaves
    prepare alone, and a sampling-only one train and prior, the next tests check.)"""
    out = sh("dvc", "exp", "run", "-S", "train.epochs=2", "-S", "prepare.train_subset=20", cwd=dvc_repo)
    for stage in ("prepare", "train", "prior", "sample", "evaluate"):
        assert f"Running stage '{stage}'" in out
    for stage in ("download", "fid_reference"):
        assert f"Running stage '{stage}'" not in out
    runs = mlflow_runs(dvc_repo, "train")
    assert sorted(r.data.params["train.epochs"] for r in runs) == ["1"] * (1 + len(QUEUED)) + ["2"]
    named = [r for r in runs if r.data.params["train.epochs"] == "2"][0]
    assert named.data.tags.get("dvc_experiment") == named.info.run_name  # run named after the DVC experiment
    assert set(facts(dvc_repo)["train"]["per_class"].values()) == {2}
    experiments = [
        e
        for e in walk_exp_show(json.loads(sh("dvc", "exp", "show", "--json", cwd=dvc_repo)))
        if e["params"]["params.yaml"]["data"]["prepare"]["train_subset"] == 20
    ]
    assert experiments and experiments[0]["metrics"]["reports/data.json"]["data"]["train"]["images"] == 20


def test_posterior_flow_experiment_trains_and_evaluates(dvc_repo: Path):
    """The command a user types to try an inverse autoregressive flow on the posterior."""
    out = sh("dvc", "exp", "run", "-S", "model.flow.posterior=iaf", "-S", "model.flow.steps=4", cwd=dvc_repo)
    for stage in ("train", "sample", "evaluate"):
        assert f"Running stage '{stage}'" in out
    for stage in ("download", "prepare", "fid_reference"):  # a model change leaves the data alone
        assert f"Running stage '{stage}'" not in out
    metrics = json.loads((dvc_repo / "reports" / "metrics.json").read_text())
    assert np.isfinite(metrics["fid"]) and np.isfinite(metrics["test_iw_bound_nats"])
    assert metrics["samples"].pop("precision") in ("fp32", "bf16")
    assert metrics["samples"] == {"latents": LATENTS, "images": "decoder mean", "temperature": 1.0}
    (run,) = [r for r in mlflow_runs(dvc_repo, "evaluate") if r.data.params.get("model.flow.posterior") == "iaf"]
    assert run.data.params["model.flow.steps"] == "4" and "fid" in run.data.metrics
    assert run.data.tags["samples.images"] == "decoder mean"


def test_resampling_a_trained_model_gets_its_own_runs_and_keeps_the_first(dvc_repo: Path):
    """``-S sample.guidance=2`` re-runs only sample and evaluate on the model and prior the workspace holds
    (the IAF one): their runs are new ones nested under the training's, and the first evaluation's FID
    stays in its own run, so the MLflow UI shows the two samplings side by side; an evaluate-only change
    (the floor's FIDs) is a new evaluation run too, and re-scores the same registered generator."""
    (trained,) = [r for r in mlflow_runs(dvc_repo, "train") if r.data.params.get("model.flow.posterior") == "iaf"]
    (first,) = [r for r in mlflow_runs(dvc_repo, "evaluate") if r.data.params.get("model.flow.posterior") == "iaf"]
    out = sh("dvc", "exp", "run", "-n", "guided", "-S", "sample.guidance=2", cwd=dvc_repo)
    for stage in ("train", "prior"):
        assert f"Running stage '{stage}'" not in out
    assert "Running stage 'sample'" in out and "Running stage 'evaluate'" in out
    metrics = json.loads((dvc_repo / "reports" / "metrics.json").read_text())
    assert metrics["samples"]["latents"].endswith("guidance 2)")
    guided = {r.data.tags["stage"]: r for r in mlflow_runs(dvc_repo) if r.data.tags.get("dvc_experiment") == "guided"}
    assert set(guided) == {"sample", "evaluate"}
    for run in guided.values():
        assert run.data.tags["mlflow.parentRunId"] == trained.info.run_id
        assert run.data.params["sample.guidance"] == "2.0" and run.data.params["model.flow.posterior"] == "iaf"
    evaluation = guided["evaluate"]
    assert evaluation.data.metrics["fid"] == pytest.approx(metrics["fid"])
    assert "final_train_seconds" in evaluation.data.metrics
    assert mlflow_client(dvc_repo).get_run(first.info.run_id).data.metrics["fid"] == first.data.metrics["fid"]
    assert first.data.metrics["fid"] != evaluation.data.metrics["fid"]
    versions = mlflow_client(dvc_repo).search_model_versions("name='cvae-cifar10'")
    assert [v.run_id for v in versions].count(guided["sample"].info.run_id) == 1  # the re-sampled generator

    # "is it the decoder or the latents?": the floor's FIDs, an evaluate-only change
    versions_before = len(versions)
    out = sh("dvc", "exp", "run", "-n", "decoder-floor", "-S", "evaluate.reconstruction_fid=true", cwd=dvc_repo)
    assert "Running stage 'sample'" not in out and "Running stage 'evaluate'" in out
    assert "floor: reconstructions FID" in out
    metrics = json.loads((dvc_repo / "reports" / "metrics.json").read_text())
    assert np.isfinite(metrics["reconstruction_fid"]) and np.isfinite(metrics["posterior_draw_fid"])
    assert metrics["reconstruction_fid_images"] == 20  # as many as the samples: 2 of the 4 test images per class
    (floor,) = [r for r in mlflow_runs(dvc_repo, "evaluate") if r.data.tags.get("dvc_experiment") == "decoder-floor"]
    assert floor.data.tags["mlflow.parentRunId"] == trained.info.run_id
    assert floor.data.tags["sampled_in_run"] == guided["sample"].info.run_id
    assert floor.data.params["sample.guidance"] == "2.0"
    assert floor.data.metrics["fid"] == pytest.approx(evaluation.data.metrics["fid"])  # same samples, same FID
    assert floor.data.metrics["posterior_draw_fid"] == pytest.approx(metrics["posterior_draw_fid"])
    # the same generator was re-evaluated: its version carries the new scores, no second version is registered
    versions = mlflow_client(dvc_repo).search_model_versions("name='cvae-cifar10'")
    assert len(versions) == versions_before
    (rescored,) = [v for v in versions if v.run_id == guided["sample"].info.run_id]
    assert rescored.tags["evaluated_in_run"] == floor.info.run_id
    untouched = mlflow_client(dvc_repo).get_run(evaluation.info.run_id).data
    assert untouched.params["evaluate.reconstruction_fid"] == "False" and "reconstruction_fid" not in untouched.metrics


def test_an_applied_experiment_is_resampled_without_retraining(dvc_repo: Path):
    """Pick a finished experiment (a queued one, trained in a temporary copy), ``dvc exp apply`` it and
    re-sample it: only sample and evaluate run, on that experiment's model, in a run nested under the
    run it trained in — its ``models/mlflow_run.json`` came back with it from git, and the workspace's
    resume checkpoint (another model's) does not make ``train`` look changed."""
    (trained,) = [
        r
        for r in mlflow_runs(dvc_repo, "train")
        if (r.data.params.get("train.lr"), r.data.params.get("train.precision")) == ("0.002", "fp32")
    ]
    name = trained.data.tags["dvc_experiment"]
    sh("dvc", "exp", "apply", name, cwd=dvc_repo)
    assert json.loads((dvc_repo / "models" / "mlflow_run.json").read_text())["run_id"] == trained.info.run_id
    assert json.loads(sh("dvc", "status", "--json", "train", cwd=dvc_repo)) == {}  # nothing to retrain
    out = sh("dvc", "exp", "run", "-n", "resampled-lr002", "-S", "sample.temperature=0.5", cwd=dvc_repo)
    assert "Running stage 'train'" not in out and "Running stage 'sample'" in out
    (resampled,) = [r for r in mlflow_runs(dvc_repo) if r.info.run_name == "resampled-lr002 · sample"]
    assert resampled.data.tags["mlflow.parentRunId"] == trained.info.run_id
    assert resampled.data.params["train.lr"] == "0.002" and resampled.data.params["sample.temperature"] == "0.5"


def test_a_queued_guidance_sweep_gets_a_run_and_a_version_for_each_guidance(dvc_repo: Path):
    """As a user would: a new prior in the workspace, then ``sample.guidance=2,4`` queued and run two at a
    time. Neither experiment re-runs train or prior (only ``sample.*`` changed); each gets its own sample and
    evaluation runs with its own guidance and FID — none lands in another's run — and the registry one
    version per generator, registered once although both ran at the same time."""
    sh("dvc", "exp", "run", "-n", "reseeded-prior", "-S", "prior.seed=1", cwd=dvc_repo)
    before = {r.info.run_id for r in mlflow_runs(dvc_repo)}
    versions_before = {v.version for v in mlflow_client(dvc_repo).search_model_versions("name='cvae-cifar10'")}
    sh("dvc", "exp", "run", "--queue", "-S", "sample.guidance=2,4", cwd=dvc_repo)
    sh("dvc", "queue", "start", "-j", "2", cwd=dvc_repo)
    deadline = time.monotonic() + 600
    while not queue_finished(dvc_repo):
        assert time.monotonic() < deadline, sh("dvc", "queue", "status", cwd=dvc_repo)
        time.sleep(1)
    assert "Failed" not in sh("dvc", "queue", "status", cwd=dvc_repo)

    new = [r for r in mlflow_runs(dvc_repo) if r.info.run_id not in before]
    assert sorted(r.data.tags["stage"] for r in new) == ["evaluate", "evaluate", "sample", "sample"]  # no train, prior
    evaluations = {r.data.params["sample.guidance"]: r for r in new if r.data.tags["stage"] == "evaluate"}
    samplings = {r.data.params["sample.guidance"]: r for r in new if r.data.tags["stage"] == "sample"}
    assert set(evaluations) == set(samplings) == {"2.0", "4.0"}
    named = walk_exp_show(json.loads(sh("dvc", "exp", "show", "--json", cwd=dvc_repo)), names=True)
    shown = {  # dvc exp show's FID of each queued experiment, by its guidance
        str(float(data["params"]["params.yaml"]["data"]["sample"]["guidance"])): data["metrics"]["reports/metrics.json"]
        for name, data in named
        if name in {r.data.tags["dvc_experiment"] for r in new}
    }
    client = mlflow_client(dvc_repo)
    versions = [v for v in client.search_model_versions("name='cvae-cifar10'") if v.version not in versions_before]
    assert sorted(v.run_id for v in versions) == sorted(r.info.run_id for r in samplings.values())
    for guidance, evaluation in evaluations.items():
        assert evaluation.data.tags["sampled_in_run"] == samplings[guidance].info.run_id
        assert evaluation.data.metrics["fid"] == pytest.approx(shown[guidance]["data"]["fid"])
        (version,) = [v for v in versions if v.run_id == samplings[guidance].info.run_id]
        assert version.tags["evaluated_in_run"] == evaluation.info.run_id
    assert evaluations["2.0"].data.metrics["fid"] != evaluations["4.0"].data.metrics["fid"]
    tally("queued guidance sweep (dvc queue start -j 2)", "a run and a registry version per guidance", 2)


def train_settings(row: dict) -> tuple[str, str]:
    """``(train.lr, train.precision)`` of a row of ``dvc exp show --json``."""
    train = row["params"]["params.yaml"]["data"]["train"]
    return str(train["lr"]), train["precision"]


def walk_exp_show(rows: list, names: bool = False) -> list:
    """Every revision's ``data`` in ``dvc exp show --json`` (baselines and their experiments); with
    ``names``, ``(name, data)`` pairs."""
    found = []
    for row in rows:
        if row.get("data"):
            found.append((row.get("name"), row["data"]) if names else row["data"])
        for exp in row.get("experiments") or []:
            found.extend(walk_exp_show(exp.get("revs", []), names))
    return found


def test_report_and_compare_show_the_runs_side_by_side(dvc_repo: Path):
    out = sh("cvae", "report", cwd=dvc_repo)
    # a CSV reader: a value may hold a comma ("bf16, channels-last" where the CPU has native bf16)
    table = pd.read_csv(dvc_repo / "reports" / "compare" / "runs.csv")
    assert {"run", "FID", "KID", "class consistency", "train.lr", "train precision", "train img/s"} <= set(table)
    assert "model.backbone" not in table  # equal in every run: not a difference
    fids = table["FID"].tolist()  # one row per evaluation, each with its scores and every param
    assert fids == sorted(fids) and len(table) == len(mlflow_runs(dvc_repo, "evaluate"))
    assert "| run" in (dvc_repo / "reports" / "compare" / "runs.md").read_text() and "FID" in out

    first, second = sorted(mlflow_runs(dvc_repo, "evaluate"), key=lambda r: r.info.start_time)[:2]
    sh("cvae", "compare", first.info.run_id, second.info.run_name, "--out", "side.png", cwd=dvc_repo)
    from PIL import Image

    with Image.open(dvc_repo / "side.png") as side, Image.open(dvc_repo / "reports" / "samples" / "grid.png") as grid:
        assert side.width > 2 * grid.width and side.height > grid.height


def use_team_remote(stack, repo: Path) -> str:
    """Make the team stack's bucket the DVC remote of ``repo`` the way a user does: ``cvae team up``
    (a no-op for a running stack) with ``--dvc-repo``, which writes .dvc/config.local."""
    out = sh("cvae", "team", "up", str(stack.directory), "--dvc-repo", str(repo), cwd=repo)
    assert "DVC remote 's3://cvae-team/dvc' is the default remote" in out
    assert "cvae-team" not in (repo / ".dvc" / "config").read_text()  # endpoint and keys stay out of git
    return "dvc/"


def test_dvc_push_to_the_s3_store_then_pull_restores_data_and_model(dvc_repo: Path, team_stack):
    prefix = use_team_remote(team_stack, dvc_repo)
    sh("dvc", "push", cwd=dvc_repo)
    assert len(team_stack.objectstore.keys(prefix)) > 10  # the outputs, as objects in the bucket
    model = (dvc_repo / "models" / "model.pt").read_bytes()
    shutil.rmtree(dvc_repo / ".dvc" / "cache")
    for out in ("models/model.pt", "data/prepared", "data/fid_reference"):
        target = dvc_repo / out
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    sh("dvc", "pull", cwd=dvc_repo)
    assert (dvc_repo / "models" / "model.pt").read_bytes() == model
    assert (dvc_repo / "data" / "fid_reference" / "stats.npz").is_file()
    assert "Data and pipelines are up to date" in sh("dvc", "status", cwd=dvc_repo)


def clone_path(repo: Path) -> Path:
    return repo.parent / "elsewhere" / "clone"


def test_a_second_clone_at_another_path_pulls_and_resamples(dvc_repo: Path, team_stack):
    """What "dvc pull on another machine" gives: the git history (models/mlflow_run.json names a run of
    a store it does not have) and the DVC outputs from the S3 store. Re-sampling must work there, re-running
    only sample and evaluate, logging to a new run of the clone's own store that names the training run."""
    sh("git", "add", "-A", cwd=dvc_repo)
    sh("git", "commit", "-qm", "state to clone", "--allow-empty", cwd=dvc_repo)
    clone = clone_path(dvc_repo)
    clone.parent.mkdir()
    sh("git", "clone", "-q", str(dvc_repo), str(clone), cwd=clone.parent)
    use_team_remote(team_stack, clone)
    sh("dvc", "pull", cwd=clone)
    assert "Data and pipelines are up to date" in sh("dvc", "status", cwd=clone)
    assert not (clone / "mlflow.db").exists()
    trained_in = json.loads((clone / "models" / "mlflow_run.json").read_text())["run_id"]
    out = sh("dvc", "exp", "run", "-n", "resampled-elsewhere", "-S", "sample.temperature=0.7", cwd=clone)
    ran = {stage for stage in ALL_STAGES if f"Running stage '{stage}'" in out}
    assert ran == {"sample", "evaluate"}, out
    runs = one_run_per_stage(mlflow_runs(clone))
    assert set(runs) == {"sample", "evaluate"}
    for run in runs.values():  # top-level: this store has no training run to nest under
        assert run.data.tags["trained_in_run"] == trained_in and "mlflow.parentRunId" not in run.data.tags
        assert run.data.params["sample.temperature"] == "0.7"
    assert "fid" in runs["evaluate"].data.metrics


def test_a_prior_experiment_refits_the_prior_only_and_nests_its_results(dvc_repo: Path):
    """``-S prior.epochs=3`` re-runs prior, sample and evaluate, never train; the new prior's losses and its
    FID land in runs nested under the training's, next to the first prior's."""
    trained_in = json.loads((dvc_repo / "models" / "mlflow_run.json").read_text())["run_id"]
    out = sh("dvc", "exp", "run", "-n", "longer-prior", "-S", "prior.epochs=3", cwd=dvc_repo)
    assert "Running stage 'train'" not in out
    for stage in ("prior", "sample", "evaluate"):
        assert f"Running stage '{stage}'" in out
    assert json.loads((dvc_repo / "reports" / "prior" / "metrics.json").read_text())["epochs"] == 3
    refit = one_run_per_stage([r for r in mlflow_runs(dvc_repo) if r.data.tags.get("dvc_experiment") == "longer-prior"])
    assert set(refit) == {"prior", "sample", "evaluate"}
    for run in refit.values():
        assert run.data.tags["mlflow.parentRunId"] == trained_in and run.data.params["prior.epochs"] == "3"
    assert "fid" in refit["evaluate"].data.metrics and "prior_val_loss" in refit["prior"].data.metrics
    assert json.loads((dvc_repo / "models" / "prior_run.json").read_text())["run_id"] == refit["prior"].info.run_id


def test_an_experiment_travels_between_clones_through_git_and_the_s3_store(dvc_repo: Path, team_stack):
    """``dvc exp push`` from the clone (its git refs to a bare remote, its outputs to the S3 store), then
    ``dvc exp pull`` and ``dvc exp apply`` in the first repository restore that experiment's outputs."""
    clone = clone_path(dvc_repo)
    bare = dvc_repo.parent / "shared.git"
    sh("git", "init", "-q", "--bare", str(bare), cwd=dvc_repo.parent)
    for repo in (clone, dvc_repo):
        sh("git", "remote", "add", "team", str(bare), cwd=repo)
    sh("dvc", "exp", "push", "team", "resampled-elsewhere", cwd=clone)
    samples = (clone / "data" / "samples" / "images.npy").read_bytes()
    shutil.rmtree(dvc_repo / ".dvc" / "cache" / "files")  # so the outputs can only come from the bucket
    sh("dvc", "exp", "pull", "team", "resampled-elsewhere", cwd=dvc_repo)
    sh("dvc", "exp", "apply", "resampled-elsewhere", cwd=dvc_repo)
    assert yaml.safe_load((dvc_repo / "params.yaml").read_text())["sample"]["temperature"] == 0.7
    assert (dvc_repo / "data" / "samples" / "images.npy").read_bytes() == samples
    assert "Data and pipelines are up to date" in sh("dvc", "status", cwd=dvc_repo)


def test_refine_off_reruns_refine_sample_and_evaluate_and_decodes_with_the_trained_model(dvc_repo: Path):
    """``-S refine.steps=0``: train and prior are not re-run (the encoder and its latents are unchanged), and
    the decoder sample uses is the trained model's, byte for byte: off reproduces the unrefined pipeline."""
    out = sh("dvc", "exp", "run", "-n", "refine-off", "-S", "refine.steps=0", cwd=dvc_repo)
    ran = {stage for stage in ALL_STAGES if f"Running stage '{stage}'" in out}
    assert ran == {"refine", "sample", "evaluate"}, out
    assert (dvc_repo / "models" / "refined.pt").read_bytes() == (dvc_repo / "models" / "model.pt").read_bytes()
    assert json.loads((dvc_repo / "reports" / "refine" / "metrics.json").read_text())["steps"] == 0
    assert "fid" in json.loads((dvc_repo / "reports" / "metrics.json").read_text())
    off = one_run_per_stage([r for r in mlflow_runs(dvc_repo) if r.data.tags.get("dvc_experiment") == "refine-off"])
    assert set(off) == {"refine", "sample", "evaluate"} and off["refine"].data.params["refine.steps"] == "0"
