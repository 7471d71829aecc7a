"""``cvae report``'s table logic on a hand-made frame shaped like ``mlflow.search_runs``'s."""

from __future__ import annotations

import pandas as pd

from cvae_pipeline.comparison import runs_table


def test_table_keeps_differing_params_and_sorts_by_fid():
    runs = pd.DataFrame(
        {
            "run_id": ["aaaaaaaa11", "bbbbbbbb22", "cccccccc33"],
            "start_time": pd.to_datetime(["2026-01-01", "2026-01-02", "2026-01-03"]),
            "tags.mlflow.runName": ["old", "fast", "slow"],
            "params.train.lr": ["0.001", "0.002", "0.0005"],
            "params.model.backbone": ["conv", "conv", "conv"],
            "params.mlflow.required": [None, "True", "True"],  # not logged by the old run: not a difference
            "metrics.fid": [250.0, 120.0, 180.0],
            "metrics.kid_mean": [0.3, 0.1, 0.2],
        }
    )
    table = runs_table(runs)
    assert list(table["run"]) == ["fast", "slow", "old"]
    assert "train.lr" in table.columns and "model.backbone" not in table.columns
    assert "mlflow.required" not in table.columns
    assert list(table["FID"]) == [120.0, 180.0, 250.0] and "KID" in table.columns


def test_table_always_shows_the_precision_each_run_trained_in_and_its_speed():
    runs = pd.DataFrame(
        {
            "run_id": ["aaaaaaaa11", "bbbbbbbb22"],
            "start_time": pd.to_datetime(["2026-01-01", "2026-01-02"]),
            "params.train.precision": ["fp32", "auto"],
            "params.train.precision_used": ["fp32", "fp32"],  # the same in both runs, shown all the same
            "metrics.fid": [80.0, 79.0],
            "metrics.final_images_per_second": [270.0, 268.0],
        }
    )
    table = runs_table(runs)
    assert list(table["train precision"]) == ["fp32", "fp32"] and list(table["train img/s"]) == [268.0, 270.0]
    assert list(table["train.precision"]) == ["auto", "fp32"]
