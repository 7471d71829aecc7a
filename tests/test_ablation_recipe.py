"""The README's ablation recipe queues valid experiments.

``dvc exp run -S key=value`` can only change keys that already exist in ``params.yaml`` and the
queued run fails only when a worker reaches it, possibly an hour later; so every row of
``benchmarks/ablation.py`` is checked here, against the real ``params.yaml`` and the pipeline's
validated config, without queueing anything.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import load_benchmark

from cvae_pipeline.config import parse_params

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ablation():
    return load_benchmark("ablation")


def _apply(params: dict, overrides: list[str]) -> dict:
    """Apply ``key.sub=value`` overrides the way ``dvc exp run -S`` does: existing keys only, YAML values."""
    for item in overrides:
        dotted, value = item.split("=", 1)
        *parents, leaf = dotted.split(".")
        node = params
        for key in parents:
            assert key in node, f"{dotted}: section {key!r} is not in params.yaml"
            node = node[key]
        assert leaf in node, f"{dotted} is not in params.yaml, so `dvc exp run -S {item}` cannot set it"
        node[leaf] = yaml.safe_load(value)
    return params


def every_row(ablation) -> dict[str, list[str]]:
    """Experiment name -> the ``-S`` overrides the recipe queues it with, for every group."""
    rows = {f"abl-{name}": ablation.merged(ablation.ABLATION, overrides) for name, overrides in ablation.ROWS.items()}
    rows |= {f"head-{name}": overrides for name, overrides in ablation.HEADLINE.items()}
    rows |= {f"probe-{name}": overrides for name, overrides in ablation.PROBES.items()}
    return rows


def test_later_override_wins(ablation):
    assert ablation.merged(["a=1", "b=2"], ["a=3"]) == ["a=3", "b=2"]


def test_every_row_sets_existing_keys_to_valid_values(ablation):
    for name, overrides in every_row(ablation).items():
        raw = yaml.safe_load((ROOT / "params.yaml").read_text())
        params = parse_params(_apply(raw, overrides), source=name)
        if name.startswith("abl-"):
            assert params.train.epochs == 1 and params.sample.per_class == 200, name
            assert params.mlflow.experiment == "cvae-ablation", name
        elif name.startswith("probe-"):
            assert params.sample.per_class == 200 and params.evaluate.likelihood_images == 2000, name
            assert params.evaluate.reconstruction_fid, f"{name}: a decoder probe measures the reconstructions"
        else:
            assert params.sample.per_class == 1000, f"{name}: headline rows use the FID-10k protocol"


def test_rows_differ_from_the_conv_row(ablation):
    """A row that changes nothing would silently duplicate ``abl-conv``."""

    def config(overrides):
        return _apply(yaml.safe_load((ROOT / "params.yaml").read_text()), ablation.merged(ablation.ABLATION, overrides))

    conv = config(ablation.ROWS["conv"])
    for name, overrides in ablation.ROWS.items():
        if name != "conv":
            assert config(overrides) != conv, name


def test_dry_run_prints_one_queue_command_per_row(ablation, capsys):
    assert ablation.main(["--dry-run"]) == 0
    commands = [line for line in capsys.readouterr().out.splitlines() if line.startswith("dvc exp run --queue")]
    assert [cmd.split()[5] for cmd in commands] == [f"abl-{name}" for name in ablation.ROWS]
    assert all("-S model.backbone=resnet" in cmd for cmd in commands if " abl-resnet " in cmd)


def test_probes_change_one_thing_each_from_the_default_probe(ablation, capsys):
    """Each decoder probe is the default's model with one change, so its FIDs are that change's
    (a latent map's size counts with its resolution: latent_dim is then its channels x r^2)."""
    base = dict(item.split("=", 1) for item in ablation.PROBES["default-2k"])
    for name, overrides in ablation.PROBES.items():
        changed = {key for key, value in (item.split("=", 1) for item in overrides) if base.get(key) != value}
        if "model.latent_resolution" in changed:
            changed.discard("model.latent_dim")
        assert len(changed) == (0 if name == "default-2k" else 1), (name, changed)
    assert ablation.main(["--probes", "--dry-run"]) == 0
    commands = [line for line in capsys.readouterr().out.splitlines() if line.startswith("dvc exp run --queue")]
    assert [cmd.split()[5] for cmd in commands] == [f"probe-{name}" for name in ablation.PROBES]


def test_only_names_rows_of_the_group_it_queues(ablation, capsys):
    """``--only default-2k`` without ``--probes`` is a usage error, not a KeyError traceback."""
    with pytest.raises(SystemExit) as exit_info:
        ablation.main(["--only", "default-2k", "--dry-run"])
    assert exit_info.value.code == 2
    assert "default-2k" in capsys.readouterr().err
    assert ablation.main(["--probes", "--only", "default-2k", "--dry-run"]) == 0
    assert "probe-default-2k" in capsys.readouterr().out


def test_rows_do_not_depend_on_the_defaults_they_were_measured_against(ablation):
    """The README's tables stay reproducible after params.yaml's defaults move on: every row pins the
    backbone, width, latent, KL weight, epochs and sampling temperature it was measured with (the default
    moved from conv to resnet, from beta 1 to 0.5, from temperature 1 to 0.85 and from a vector z to a
    latent map after most rows were run)."""
    pinned = [
        ("model", "backbone"),
        ("model", "width"),
        ("model", "latent_dim"),
        ("model", "latent_resolution"),
        ("train", "beta"),
        ("train", "epochs"),
        ("sample", "temperature"),
    ]
    other_defaults = {
        "model": {"backbone": "mlp", "width": 16, "latent_dim": 48, "latent_resolution": 4},
        "train": {"beta": 0.125, "epochs": 3},
        "sample": {"temperature": 0.3},
    }
    for name, overrides in every_row(ablation).items():
        as_is = _apply(yaml.safe_load((ROOT / "params.yaml").read_text()), overrides)
        moved = yaml.safe_load((ROOT / "params.yaml").read_text())
        for section, values in other_defaults.items():
            moved[section].update(values)
        moved = _apply(moved, overrides)
        for section, key in pinned:
            assert moved[section][key] == as_is[section][key], f"{name} does not pin {section}.{key}"


def test_rows_that_pin_the_steps_pin_the_solver_they_were_counted_in(ablation):
    """50 steps of DDIM and 50 of DPM-Solver++(2M) are different samplers: a row measured with DDIM before
    ``sample.solver`` existed must say so, or it queues with whatever solver params.yaml defaults to."""
    for name, overrides in every_row(ablation).items():
        keys = {item.split("=", 1)[0] for item in overrides}
        assert "sample.steps" not in keys or "sample.solver" in keys, f"{name} pins sample.steps but not the solver"


def test_every_row_was_measured_without_the_decoder_refinement(ablation):
    """Every row predates the ``refine`` stage: each queues with it off, or it would measure another decoder."""
    for name, overrides in every_row(ablation).items():
        assert "refine.steps=0" in overrides, name
