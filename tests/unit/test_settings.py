from __future__ import annotations

import re
from pathlib import Path

import pytest

from dicom_node.errors import ConfigError
from dicom_node.settings import load_settings, parse_settings
from tests.conftest import REPO, settings_dict


def test_example_config_loads_with_paths_relative_to_the_file() -> None:
    settings = load_settings(REPO / "config" / "node.example.toml")
    assert settings.node.ae_title == "DICOMNODE"
    assert settings.node.port == 11112
    assert settings.destinations["PACS"].ae_title == "ORTHANC"
    assert settings.destinations["PACS"].port == 4242
    assert settings.node.storage_dir == (REPO / "var" / "storage").resolve()
    assert settings.node.database_url == f"sqlite:///{(REPO / 'var' / 'index.sqlite').resolve()}"
    assert settings.rules[0].model == "builtin"


@pytest.mark.parametrize(
    ("section", "change", "message"),
    [
        ("node", {"port": 70000}, "node.port"),
        ("node", {"port": "11112"}, "node.port: expected int"),
        ("node", {"ae_title": "A_VERY_LONG_AE_TITLE_X"}, "node.ae_title"),
        ("node", {"ae_title": "BAD\\AE"}, "node.ae_title"),
        ("node", {"colour": 1}, "node.colour: unknown key; known: ae_title, allowed_calling_aes"),
        ("identity", {"uid_root": "1.2.x"}, "identity.uid_root"),
        ("identity", {"series_description_prefix": "Contours"}, "AI-generated"),
        ("completion", {"quiet_seconds": 0}, "completion.quiet_seconds"),
        ("node", {"port": True}, "got a boolean"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, section: str, change: dict[str, object], message: str) -> None:
    data = settings_dict(tmp_path)
    data[section] = {**data[section], **change}
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_settings(data, tmp_path)


def test_missing_required_key(tmp_path: Path) -> None:
    data = settings_dict(tmp_path)
    del data["identity"]["manufacturer"]
    with pytest.raises(ConfigError, match=r"identity\.manufacturer: missing"):
        parse_settings(data, tmp_path)


def test_rule_naming_an_unknown_destination(tmp_path: Path) -> None:
    data = settings_dict(tmp_path, routing={"rules": [{"name": "r", "model": "builtin", "destinations": ["TPS"]}]})
    with pytest.raises(ConfigError, match=r"routing.rules\[0\].destinations\[0\]: 'TPS' is not a configured"):
        parse_settings(data, tmp_path)


def test_rule_with_unknown_output_kind(tmp_path: Path) -> None:
    data = settings_dict(
        tmp_path,
        destinations=[{"name": "PACS", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242}],
        routing={"rules": [{"name": "r", "model": "builtin", "destinations": ["PACS"], "outputs": ["PDF"]}]},
    )
    with pytest.raises(ConfigError, match=r"outputs\[0\]: 'PDF' is not one of SEG, RTSTRUCT, SR, PREVIEW"):
        parse_settings(data, tmp_path)


def test_sr_and_preview_are_output_kinds_but_not_the_default(tmp_path: Path) -> None:
    dest = [{"name": "PACS", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242}]
    rules = [{"name": "r", "model": "builtin", "destinations": ["PACS"], "outputs": ["seg", "sr", "preview"]},
             {"name": "d", "model": "builtin", "destinations": ["PACS"]}]
    settings = parse_settings(settings_dict(tmp_path, destinations=dest, routing={"rules": rules}), tmp_path)
    assert settings.rules[0].outputs == ("SEG", "SR", "PREVIEW")
    assert settings.rules[1].outputs == ("SEG", "RTSTRUCT")  # configs written before SR/PREVIEW mean the same
    assert (settings.identity.sr_series_number, settings.identity.preview_series_number) == (9903, 9904)
    data = settings_dict(tmp_path)
    data["identity"] = {**data["identity"], "sr_series_number": 501, "preview_series_number": 502}
    identity = parse_settings(data, tmp_path).identity
    assert (identity.sr_series_number, identity.preview_series_number) == (501, 502)


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[node\nport = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "absent.toml")


def test_models_threads_and_memory_budget(tmp_path: Path) -> None:
    data = settings_dict(tmp_path, models={"device": "cpu", "threads": 2, "memory_budget_gb": 6})
    models = parse_settings(data, tmp_path).models
    assert (models.device, models.threads, models.memory_budget_gb) == ("cpu", 2, 6.0)
    example = load_settings(REPO / "config" / "node.example.toml").models
    assert (example.threads, example.memory_budget_gb) == (0, 8.0)


@pytest.mark.parametrize(("change", "message"), [
    ({"threads": -1}, "models.threads"),
    ({"threads": 1.5}, "models.threads: expected int"),
    ({"memory_budget_gb": 0}, "models.memory_budget_gb"),
    ({"memory_budget_gb": "8"}, "models.memory_budget_gb: expected"),
])
def test_bad_models_values_name_the_key(tmp_path: Path, change: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_settings(settings_dict(tmp_path, models=change), tmp_path)
