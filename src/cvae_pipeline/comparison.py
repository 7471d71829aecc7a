"""Comparing runs: a table of an experiment's runs and two runs' sample grids side by side.

Both read the MLflow store the pipeline writes (``tracking.tracking_uri()``), so
they see the same runs as ``make ui``, including ``dvc exp run --queue`` ones.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw

from .errors import PipelineError

# metric columns of the table, best first, under short names; the first present sorts the table
SCORES = {
    "fid": "FID",
    "kid_mean": "KID",
    "class_consistency": "class consistency",
    "precision": "precision",
    "recall": "recall",
    "test_neg_elbo_bits_per_dim": "bits/dim",
    "test_neg_elbo_nats": "-ELBO (nats)",
    "final_train_seconds": "train s",
    "final_images_per_second": "train img/s",
}
#: params shown for every run even where all runs agree: what the numbers beside them depend on
ALWAYS_SHOWN = {"train.precision_used": "train precision"}
GRID_ARTIFACTS = ("samples/final_grid.png",)  # else the last per-epoch grid


def runs_frame(experiment: str) -> pd.DataFrame:
    import mlflow

    from . import tracking

    tracking.configure_store()
    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        raise PipelineError(f"no MLflow experiment '{experiment}' in {tracking.tracking_uri()}; run `dvc repro` first")
    runs = mlflow.search_runs([found.experiment_id], output_format="pandas")
    if runs.empty:
        raise PipelineError(f"MLflow experiment '{experiment}' has no runs yet; run `dvc repro` first")
    if "metrics.fid" in runs and runs["metrics.fid"].notna().any():
        runs = runs[runs["metrics.fid"].notna()]  # the evaluations: each holds its scores and every param
    return runs


def runs_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run: name, the params that differ between runs, the scores; sorted by FID.

    A param missing from some runs (logged by a later version of the pipeline) differs only if
    the runs that have it disagree on it."""
    params = [c for c in runs.columns if c.startswith("params.")]
    differing = [c for c in params if runs[c].dropna().astype(str).nunique() > 1]
    table = pd.DataFrame(
        {
            "run": runs.get("tags.mlflow.runName", pd.Series([""] * len(runs))).fillna(""),
            "run_id": runs["run_id"].str[:8],
            "started": pd.to_datetime(runs["start_time"]).dt.strftime("%Y-%m-%d %H:%M"),
        }
    )
    for column in differing:
        table[column.removeprefix("params.")] = runs[column]
    for param, label in ALWAYS_SHOWN.items():
        if f"params.{param}" in runs.columns:
            table[label] = runs[f"params.{param}"]
    for key, label in SCORES.items():
        if f"metrics.{key}" in runs.columns:
            table[label] = runs[f"metrics.{key}"]
    sort_by = next((label for key, label in SCORES.items() if label in table.columns), "started")
    return table.sort_values(sort_by, na_position="last").reset_index(drop=True)


def write_report(table: pd.DataFrame, out_dir: Path) -> tuple[Path, Path]:
    from .io import atomic_file

    out_dir.mkdir(parents=True, exist_ok=True)
    markdown, csv = out_dir / "runs.md", out_dir / "runs.csv"
    with atomic_file(markdown) as tmp:
        tmp.write_text(table.to_markdown(index=False, floatfmt=".4g") + "\n")
    with atomic_file(csv) as tmp:
        table.to_csv(tmp, index=False)
    return markdown, csv


def _run_grid(client, run_id: str, workdir: Path) -> Image.Image:
    """The run's sample grid; an evaluation's is in the run that drew its samples (``sampled_in_run``)."""
    paths = {a.path for a in client.list_artifacts(run_id, "samples")}
    sampled_in = client.get_run(run_id).data.tags.get("sampled_in_run")
    if not paths and sampled_in:
        return _run_grid(client, sampled_in, workdir)
    wanted = [p for p in GRID_ARTIFACTS if p in paths] or sorted(p for p in paths if p.endswith(".png"))[-1:]
    if not wanted:
        raise PipelineError(f"MLflow run {run_id} has no sample grid (samples/*.png); run its sample stage")
    local = client.download_artifacts(run_id, wanted[0], str(workdir))
    with Image.open(local) as image:
        return image.convert("RGB")


def _resolve_run(client, experiment_ids: list[str], ref: str):
    """A run by id, id prefix, or run name (= DVC experiment name)."""
    import mlflow

    try:
        return client.get_run(ref)
    except mlflow.exceptions.MlflowException:
        pass
    runs = client.search_runs(experiment_ids, max_results=5000)
    matches = [r for r in runs if r.info.run_id.startswith(ref) or r.info.run_name == ref]
    if len(matches) != 1:
        what = "no run" if not matches else f"{len(matches)} runs"
        raise PipelineError(
            f"{what} matching '{ref}': give a run id, a unique id prefix or a run name (see `cvae report`)"
        )
    return matches[0]


def side_by_side(experiment: str, refs: list[str], out: Path) -> Path:
    """One PNG with the runs' final sample grids next to each other, each titled with its name and FID."""
    import mlflow

    from . import tracking
    from .io import atomic_file

    tracking.configure_store()
    client = mlflow.MlflowClient()
    found = mlflow.get_experiment_by_name(experiment)
    ids = [found.experiment_id] if found else []
    runs = [_resolve_run(client, ids, ref) for ref in refs]
    with tempfile.TemporaryDirectory() as tmp:
        grids = [_run_grid(client, run.info.run_id, Path(tmp)) for run in runs]
    title_h, gap = 28, 16
    width = sum(g.width for g in grids) + gap * (len(grids) - 1)
    canvas = Image.new("RGB", (width, max(g.height for g in grids) + title_h), "white")
    draw = ImageDraw.Draw(canvas)
    x = 0
    for run, grid in zip(runs, grids):
        fid = run.data.metrics.get("fid")
        title = f"{run.info.run_name or run.info.run_id[:8]}" + (f"  FID {fid:.1f}" if fid is not None else "")
        draw.text((x + 4, 8), title, fill="black")
        canvas.paste(grid, (x, title_h))
        x += grid.width + gap
    with atomic_file(out) as tmp:
        canvas.save(tmp, format="PNG")
    return out
