"""Config validation: every problem at once, each with its TOML path; range checks; cross-checks; the schema."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
from pydantic import ValidationError

from dicom_node.errors import ConfigError
from dicom_node.settings import (
    MATCH_KEYWORDS,
    ConfigDocument,
    Destination,
    RoutingRule,
    config_json_schema,
    load_settings,
    parse_settings,
)
from tests.conftest import REPO, settings_dict

PACS = {"name": "PACS", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242}


def _problems(data: dict[str, Any], base: Path) -> list[str]:
    """The problem lines of the ConfigError the document raises (the header line left out)."""
    with pytest.raises(ConfigError) as caught:
        parse_settings(data, base)
    header, *lines = str(caught.value).splitlines()
    assert header.startswith("invalid config (") and header.endswith(f"({len(lines)} error{'s' * (len(lines) > 1)}):")
    return [line.strip() for line in lines]


def _with(tmp: Path, section: str, **values: Any) -> dict[str, Any]:
    data = settings_dict(tmp, destinations=[dict(PACS)],
                         routing={"rules": [{"name": "r", "model": "builtin", "destinations": ["PACS"]}]})
    if section == "destinations":
        data["destinations"] = [{**PACS, **values}]
    elif section == "routing.rules":
        data["routing"]["rules"] = [{**data["routing"]["rules"][0], **values}]
    else:
        data[section] = {**data.get(section, {}), **values}
    return data


def test_every_error_is_reported_at_once_with_its_toml_path(tmp_path: Path) -> None:
    data = settings_dict(
        tmp_path,
        destinations=[PACS, {**PACS, "name": "TPS", "port": 70000}],
        routing={"rules": [
            {"name": "ct", "model": "builtin", "destinations": ["PACS"]},
            {"name": "ct-2", "model": "builtin", "destinations": ["PACS", "NOWHERE"]},
            {"name": "ct-3", "model": "builtin", "destinations": ["TPS"], "match": {"Modalty": "CT"}},
        ]},
    )
    data["node"]["min_free_disk_mb"] = -1
    data["identity"]["seg_series_number"] = 0
    assert _problems(data, tmp_path) == [
        "node.min_free_disk_mb: must be >= 0, got -1",
        "identity.seg_series_number: must be between 1 and 2147483647, got 0",
        "destinations[1].port: must be between 1 and 65535, got 70000",
        "routing.rules[2].match.Modalty: unknown key; known: BodyPartExamined, Modality, SeriesDescription",
        "routing.rules[1].destinations[1]: 'NOWHERE' is not a configured destination (known: PACS, TPS)",
    ]


def test_the_file_is_named_and_relative_paths_follow_it(tmp_path: Path) -> None:
    config = tmp_path / "conf" / "node.toml"
    config.parent.mkdir()
    text = (REPO / "config" / "node.example.toml").read_text()
    config.write_text(text.replace("port = 4242", "port = 0").replace('device = "auto"', 'device = "gpu"'))
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    assert str(caught.value).splitlines() == [
        f"invalid config {config.resolve()} (2 errors):",
        "  destinations[0].port: must be between 1 and 65535, got 0",
        "  models.device: 'gpu' is not one of auto, cpu, cuda, cuda:N",
    ]
    config.write_text(text.replace('output_dir = "../var/outputs"\n', ""))
    settings = load_settings(config)
    assert settings.source == config.resolve()
    assert settings.node.storage_dir == (tmp_path / "var" / "storage").resolve()
    assert settings.worker.output_dir == settings.node.storage_dir / "outputs"  # the default follows storage
    assert settings.models.dir == (tmp_path / "var" / "models").resolve()


def test_unknown_match_key_is_an_error_not_a_rule_that_never_matches(tmp_path: Path) -> None:
    data = _with(tmp_path, "routing.rules", match={"Modality": "CT", "PatientName": "*", "bodypartexamined": "CHEST"})
    known = ", ".join(sorted(MATCH_KEYWORDS))
    assert _problems(data, tmp_path) == [f"routing.rules[0].match.PatientName: unknown key; known: {known}",
                                         f"routing.rules[0].match.bodypartexamined: unknown key; known: {known}"]
    rule = parse_settings(_with(tmp_path, "routing.rules", match={"SeriesDescription": "*plan*"}), tmp_path).rules[0]
    assert rule.match == {"SeriesDescription": "*plan*"}


@pytest.mark.parametrize(("section", "key", "value", "message"), [
    ("node", "port", 0, "must be between 1 and 65535, got 0"),
    ("node", "port", 65536, "must be between 1 and 65535, got 65536"),
    ("node", "min_free_disk_mb", -1, "must be >= 0, got -1"),
    ("node", "max_pdu", 4095, "must be 0 (unlimited) or between 4096 and 4294967295 bytes, got 4095"),
    ("node", "max_pdu", 2**32, "must be 0 (unlimited) or between 4096 and 4294967295 bytes, got 4294967296"),
    ("node", "max_pdu", -1, "must be 0 (unlimited) or between 4096 and 4294967295 bytes, got -1"),
    ("node", "host", " ", "must not be empty"),
    ("completion", "quiet_seconds", -5, "must be greater than 0, got -5"),
    ("completion", "settle_seconds", -0.5, "must be >= 0, got -0.5"),
    ("completion", "sweep_interval_seconds", 0, "must be greater than 0, got 0"),
    ("worker", "poll_interval_seconds", 0, "must be greater than 0, got 0"),
    ("worker", "max_attempts", 0, "must be >= 1, got 0"),
    ("worker", "stale_after_seconds", 0, "must be greater than 0, got 0"),
    ("worker", "heartbeat_seconds", 0, "must be greater than 0, got 0"),
    ("identity", "rtstruct_series_number", 2**31, "must be between 1 and 2147483647, got 2147483648"),
    ("identity", "preview_series_number", -1, "must be between 1 and 2147483647, got -1"),
    ("identity", "manufacturer", "x" * 65, "must be at most 64 characters (DICOM LO), got 65"),
    ("destinations", "port", 70000, "must be between 1 and 65535, got 70000"),
    ("destinations", "max_age_hours", 0, "must be between 0.0001 and 8760 hours, got 0"),
    ("destinations", "max_age_hours", 8761, "must be between 0.0001 and 8760 hours, got 8761"),
    ("destinations", "retry_max_backoff_seconds", 901, "must be between 0.1 and 900 s, got 901"),
    ("destinations", "retry_backoff_seconds", 0, "must be greater than 0, got 0"),
    ("destinations", "retry_backoff_seconds", -10, "must be greater than 0, got -10"),
    ("destinations", "timeout_seconds", 0, "must be greater than 0, got 0"),
    ("destinations", "accepts_labelmap_seg", 1, "expected bool (true or false), got int 1"),
    ("routing.rules", "seg_max_segments", -1, "must be >= 0 (0: no limit), got -1"),
    ("models", "threads", -1, "must be >= 0 (0: torch's default), got -1"),
    ("models", "memory_budget_gb", 0.1, "must be between 0.25 and 4096 GB, got 0.1"),
    ("models", "memory_budget_gb", 5000, "must be between 0.25 and 4096 GB, got 5000"),
    ("housekeeping", "keep_instances_days", -1, "must be between 0 and 36500 days (0: keep forever), got -1"),
    ("housekeeping", "keep_outputs_days", 36501, "must be between 0 and 36500 days (0: keep forever), got 36501"),
    ("housekeeping", "interval_minutes", 0, "must be between 1 and 1440 minutes, got 0"),
    ("housekeeping", "emergency_free_disk_mb", -1, "must be >= 0, got -1"),
])
def test_range_checks(tmp_path: Path, section: str, key: str, value: object, message: str) -> None:
    where = {"destinations": "destinations[0]", "routing.rules": "routing.rules[0]"}.get(section, section)
    assert _problems(_with(tmp_path, section, **{key: value}), tmp_path) == [f"{where}.{key}: {message}"]


@pytest.mark.parametrize(("section", "key", "value"), [
    ("node", "port", 1), ("node", "port", 65535), ("node", "max_pdu", 0), ("node", "max_pdu", 4096),
    ("node", "max_pdu", 2**32 - 1), ("node", "min_free_disk_mb", 0), ("completion", "settle_seconds", 0),
    ("identity", "seg_series_number", 2**31 - 1), ("destinations", "max_age_hours", 8760),
    ("destinations", "retry_backoff_seconds", 0.5), ("destinations", "retry_max_backoff_seconds", 900),
    ("destinations", "max_age_hours", 0.0001), ("models", "memory_budget_gb", 0.25),
    ("housekeeping", "keep_instances_days", 0), ("housekeeping", "keep_outputs_days", 36500),
    ("housekeeping", "interval_minutes", 1), ("housekeeping", "interval_minutes", 1440),
    ("housekeeping", "emergency_free_disk_mb", 0), ("housekeeping", "emergency_free_disk_mb", 2),
])
def test_range_limits_are_accepted(tmp_path: Path, section: str, key: str, value: object) -> None:
    settings = parse_settings(_with(tmp_path, section, **{key: value}), tmp_path)
    table: Any = {"destinations": settings.destinations["PACS"]}.get(section, getattr(settings, section))
    assert getattr(table, key) == value


def test_cross_checks_are_in_the_same_list(tmp_path: Path) -> None:
    data = settings_dict(
        tmp_path, destinations=[PACS, PACS],
        templates=[{"name": "lung"}, {"name": "lung", "include": ["Lungz"]}],
        routing={"rules": [{"name": "r", "model": "builtin", "destinations": ["PACS"], "template": "lungs"},
                           {"name": "r", "model": "builtin", "destinations": ["PACS"], "outputs": ["PDF"]}]},
        worker={"heartbeat_seconds": 30, "stale_after_seconds": 30},
    )
    assert _problems(data, tmp_path) == [
        "routing.rules[1].outputs[0]: 'PDF' is not one of SEG, RTSTRUCT, SR, PREVIEW",
        "templates[1].include[0]: 'Lungz' is not a structure of the catalogue",
        "destinations[1].name: duplicate destination name 'PACS' (also destinations[0])",
        "templates[1].name: duplicate template name 'lung' (also templates[0])",
        "routing.rules[1].name: duplicate rule name 'r' (also routing.rules[0])",
        "routing.rules[0].template: 'lungs' is not a configured template (known: lung)",
        "worker.heartbeat_seconds: must be less than worker.stale_after_seconds (30), got 30: "
        "running jobs would be taken as stale",
    ]


@pytest.mark.parametrize("floor", [200, 300])
def test_the_emergency_threshold_must_be_above_the_receivers_floor(tmp_path: Path, floor: int) -> None:
    """At or below node.min_free_disk_mb the clean-up would start only after C-STOREs are refused."""
    data = settings_dict(tmp_path, node={"min_free_disk_mb": floor}, housekeeping={"emergency_free_disk_mb": 200})
    if floor == 200:
        del data["node"]["min_free_disk_mb"]  # the default floor (200) counts too
    assert _problems(data, tmp_path) == [
        f"housekeeping.emergency_free_disk_mb: must be 0 (off) or more than node.min_free_disk_mb ({floor}), "
        "got 200: the receiver would refuse instances before the clean-up starts"]
    data["housekeeping"]["emergency_free_disk_mb"] = floor + 1
    assert parse_settings(data, tmp_path).housekeeping.emergency_free_disk_mb == floor + 1


def test_broken_tables_are_reported_without_follow_on_errors(tmp_path: Path) -> None:
    data = settings_dict(tmp_path, destinations={"name": "PACS"}, templates=[5],
                         routing={"rules": [{"name": "r", "model": "builtin", "destinations": ["PACS"], "x": 1}]})
    data["completion"] = 3
    assert _problems(data, tmp_path) == [
        "completion: must be a table ([completion]), got int 3",
        "destinations: must be an array of tables ([[destinations]]), got a table",
        "routing.rules[0].x: unknown key; known: destinations, fallback, match, model, name, outputs, "
        "review, reviewers, seg_max_segments, seg_type, template",
        "templates[0]: must be a table ([[templates]]), got int 5",
    ]


def test_wrong_types_and_unknown_sections(tmp_path: Path) -> None:
    data = settings_dict(tmp_path, models={"dir": 3}, logging={"level": "debug"})
    data["node"]["allowed_calling_aes"] = ["SCANNER", 7]
    data["identity"]["uid_root"] = 1.2
    assert _problems(data, tmp_path) == [
        "node.allowed_calling_aes[1]: expected str, got int 7",
        "identity.uid_root: expected str, got float 1.2",
        "models.dir: expected str (a path), got int 3",
        "logging: unknown key; known: completion, destinations, housekeeping, identity, models, node, routing, "
        "structures, templates, web, worker",
    ]


def test_models_built_in_code_are_validated_too() -> None:
    rule = RoutingRule("r", "builtin", ("PACS",), outputs=("seg",))
    assert rule.outputs == ("SEG",) and rule.seg_type == "BINARY"
    with pytest.raises(ValidationError, match="must be between 1 and 65535, got 70000"):
        Destination("PACS", "ORTHANC", "127.0.0.1", 70000)


def test_json_schema_describes_the_file_and_the_example_fits_it() -> None:
    schema = config_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert set(schema["properties"]) == set(ConfigDocument.model_fields)
    assert set(schema["properties"]) == {"node", "completion", "worker", "identity", "destinations", "routing",
                                         "templates", "models", "housekeeping", "web", "structures"}
    assert schema["required"] == ["node", "identity"]
    example = tomllib.loads((REPO / "config" / "node.example.toml").read_text())
    jsonschema.validate(example, schema)
    # the schema carries the checks an editor can make: ranges, unknown keys, match keys
    bad = {**example, "destinations": [{**example["destinations"][0], "port": 70000}]}
    with pytest.raises(jsonschema.ValidationError, match="70000"):
        jsonschema.validate(bad, schema)
    bad = {**example, "routing": {"rules": [{**example["routing"]["rules"][0], "match": {"Modalty": "CT"}}]}}
    with pytest.raises(jsonschema.ValidationError, match="Modalty"):
        jsonschema.validate(bad, schema)
    with pytest.raises(jsonschema.ValidationError, match="colour"):
        jsonschema.validate({**example, "node": {**example["node"], "colour": 1}}, schema)


def test_a_destination_max_attempts_of_earlier_versions_says_what_replaced_it(tmp_path: Path) -> None:
    (problem,) = _problems(_with(tmp_path, "destinations", max_attempts=5), tmp_path)
    assert problem.startswith("destinations[0].max_attempts: no longer used: a delivery is retried until it is "
                              "max_age_hours old"), problem


def test_a_first_back_off_longer_than_the_longest_is_refused(tmp_path: Path) -> None:
    data = _with(tmp_path, "destinations", retry_backoff_seconds=120, retry_max_backoff_seconds=60)
    assert _problems(data, tmp_path) == [
        "destinations[0].retry_backoff_seconds: must be at most retry_max_backoff_seconds (60), got 120"]
