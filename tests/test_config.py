from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import BIN, REPO

from cvae_pipeline.config import load_params, parse_params
from cvae_pipeline.errors import ConfigError


def base_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def error_for(raw: dict) -> str:
    with pytest.raises(ConfigError) as info:
        parse_params(raw, "params.yaml")
    return str(info.value)


def test_repository_params_validate():
    params = load_params(REPO / "params.yaml")
    assert params.data.sources[0].checksum[0] == "sha256"
    assert params.data.sources[1].is_url and params.data.sources[1].checksum[0] == "md5"
    assert 0 < params.prepare.val_fraction < 1


def test_unknown_key_names_key_and_allowed_keys():
    raw = base_params()
    raw["prepare"]["val_fractoin"] = 0.2
    msg = error_for(raw)
    assert "\n" not in msg
    assert "unknown key 'prepare.val_fractoin'" in msg
    assert "val_fraction" in msg and "train_subset" in msg


def test_unknown_section_is_rejected():
    raw = base_params()
    raw["trian"] = {"epochs": 3}
    assert "unknown key 'trian'" in error_for(raw)


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("prepare", "val_fraction", 1.5, "less than or equal to 0.5"),
        ("prepare", "val_fraction", 0, "greater than 0"),
        ("prepare", "train_subset", "many", "valid integer"),
        ("prepare", "train_subset", -5, "greater than 0"),
        ("prepare", "train_subset", 10.5, "valid integer"),
        ("prepare", "seed", True, "valid integer"),
        ("data", "timeout_seconds", 0, "greater than 0"),
        ("train", "precision", "fp16", "'auto', 'fp32' or 'bf16'"),
        ("sample", "precision", "bf16-mixed", "'auto', 'fp32' or 'bf16'"),
    ],
)
def test_bad_value_names_key_value_and_rule(section, key, value, expected):
    raw = base_params()
    raw[section][key] = value
    msg = error_for(raw)
    assert f"params.yaml: {section}.{key} = {value!r} is invalid" in msg
    assert expected in msg
    assert "\n" not in msg


def test_source_needs_exactly_one_checksum():
    raw = base_params()
    raw["data"]["sources"] = [{"uri": "a.tar.gz"}]
    assert "exactly one of sha256 or md5" in error_for(raw)
    raw["data"]["sources"] = [{"uri": "a.tar.gz", "sha256": "0" * 64, "md5": "0" * 32}]
    assert "exactly one of sha256 or md5" in error_for(raw)


def test_malformed_checksum_is_rejected():
    raw = base_params()
    raw["data"]["sources"] = [{"uri": "a.tar.gz", "sha256": "abc"}]
    msg = error_for(raw)
    assert "data.sources[0].sha256 = 'abc'" in msg


def test_sources_must_be_a_list():
    raw = base_params()
    raw["data"]["sources"] = {"uri": "a.tar.gz", "md5": "0" * 32}
    assert "must be a list" in error_for(raw)


def test_missing_file_and_bad_yaml(tmp_path: Path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "params.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML: .* at line 2"):
        load_params(bad)
    bad.write_text("- just a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_params(bad)


def test_yaml_error_names_the_line_the_mistake_is_on(tmp_path: Path):
    """An unclosed bracket on line 5 is noticed on line 6; the message names both, line 5 as the start."""
    bad = tmp_path / "params.yaml"
    bad.write_text("data:\n  sources: []\ntrain:\n  epochs: 7\n  lr: [1e-3\n  beta: 0.5\n")
    with pytest.raises(ConfigError) as info:
        load_params(bad)
    message = str(info.value)
    assert "\n" not in message and "starts at line 5, column 7" in message, message


def test_a_missing_key_is_an_error_not_a_second_default():
    raw = base_params()
    del raw["train"]["beta"]
    assert error_for(raw) == "params.yaml: missing key 'train.beta'"


def test_configuration_reference_is_what_cvae_params_markdown_prints():
    """docs/configuration.md is generated from the schema and params.yaml by the command it names;
    regenerate it with `cvae params --markdown > docs/configuration.md` after changing either. (Run
    as a user runs it: the command once failed on an import while a test of the renderer passed.)"""
    printed = subprocess.run([str(BIN / "cvae"), "params", "--markdown"], cwd=REPO, capture_output=True, text=True)
    assert printed.returncode == 0, printed.stderr
    assert (REPO / "docs" / "configuration.md").read_text() == printed.stdout, (
        "docs/configuration.md is out of date: run `cvae params --markdown > docs/configuration.md`"
    )


def test_every_knob_has_one_description_and_params_yaml_none():
    """The meaning of a knob is written once, in the schema; params.yaml carries values only."""
    from cvae_pipeline.config import PipelineParams

    def leaves(model, prefix=""):
        for name, field in model.model_fields.items():
            nested = getattr(field.annotation, "model_fields", None)
            if nested is not None:
                yield from leaves(field.annotation, f"{prefix}{name}.")
            else:
                yield f"{prefix}{name}", field

    for key, field in leaves(PipelineParams):
        assert field.description, f"{key} has no description"
    for number, line in enumerate((REPO / "params.yaml").read_text().splitlines(), 1):
        if "#" in line and not line.lstrip().startswith("#"):
            assert "uri:" in line, f"params.yaml line {number} describes a knob in a comment: {line.strip()}"


def test_one_stated_python_minimum_checked_at_start():
    import tomllib

    from cvae_pipeline.errors import PipelineError
    from cvae_pipeline.stage import MIN_PYTHON, check_python

    stated = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert stated == ">=" + ".".join(map(str, MIN_PYTHON))
    assert ".".join(map(str, MIN_PYTHON)) in (REPO / "README.md").read_text()
    with pytest.raises(PipelineError, match=r"^Python 3\.10\.12 is too old: cvae-pipeline needs Python >= 3\.11\.4"):
        check_python((3, 10, 12))
    check_python((3, 11, 4))
