from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import REPO, prepare_params
from test_prepare import toy_dataset

from cvae_pipeline.cli import main
from cvae_pipeline.data.prepared import make_splits, save_prepared

CVAE = Path(sys.executable).parent / "cvae"


def test_console_script_is_installed():
    out = subprocess.run([str(CVAE), "--version"], capture_output=True, text=True, check=True).stdout
    assert out.startswith("cvae-pipeline ")


def test_params_prints_validated_params_with_defaults(capsys):
    assert main(["params", "--params", str(REPO / "params.yaml")]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["prepare"]["val_fraction"] == 0.1 and shown["data"]["timeout_seconds"] == 60


def test_params_error_is_one_line_and_nonzero(tmp_path, capsys):
    bad = tmp_path / "params.yaml"
    bad.write_text((REPO / "params.yaml").read_text().replace("seed: 0", "seed: -1", 1))
    assert main(["params", "--params", str(bad)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "prepare.seed = -1" in err and "\n" not in err


def test_data_info_counts_per_split_and_class(tmp_path, capsys):
    ds = toy_dataset()
    save_prepared(tmp_path, make_splits(ds, prepare_params(train_subset=100)), ds.classes, {})
    assert main(["data-info", str(tmp_path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows["train"]["total"] == 100 and rows["train"]["c3"] == 10 and rows["test"]["c0"] == 20
