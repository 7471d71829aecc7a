from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import REPO

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
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_params(bad)
    bad.write_text("- just a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_params(bad)
