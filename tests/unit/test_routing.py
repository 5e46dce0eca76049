from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from dicom_node.routing import (
    MATCHABLE_KEYWORDS,
    RoutedAction,
    RoutingError,
    SeriesAttributes,
    explain,
    route,
    select_rules,
)
from dicom_node.settings import RoutingRule, Settings
from tests.conftest import make_settings


def _rule(name: str, **match: str) -> RoutingRule:
    return RoutingRule(name=name, model="builtin", destinations=("PACS",), match=match)


def test_rules_match_case_insensitive_patterns_in_order() -> None:
    rules = (_rule("chest", BodyPartExamined="CHEST|LUNG"), _rule("lung", BodyPartExamined="lung*"),
             _rule("all-ct", Modality="CT"), _rule("mr", Modality="MR"))
    series = SeriesAttributes(Modality="CT", BodyPartExamined="LUNG", SeriesDescription="Thorax 3mm")
    assert [r.name for r in select_rules(rules, series)] == ["lung", "all-ct"]


def test_rule_without_match_takes_everything() -> None:
    series = SeriesAttributes(Modality="CT")
    assert [r.name for r in select_rules((_rule("any"),), series)] == ["any"]


def test_unknown_match_keyword_is_refused_not_silently_never_matching() -> None:
    with pytest.raises(ValidationError, match="unknown key; known: BodyPartExamined, Modality, SeriesDescription"):
        _rule("odd", PatientName="*")


def test_matchable_keywords_are_the_series_attributes() -> None:
    # the config accepts exactly the keys routing can look up
    assert set(MATCHABLE_KEYWORDS) == set(SeriesAttributes.__dataclass_fields__)


def test_description_pattern() -> None:
    rules = (_rule("planning", SeriesDescription="*plan*"),)
    assert select_rules(rules, SeriesAttributes(Modality="CT", SeriesDescription="RT Planning CT"))
    assert not select_rules(rules, SeriesAttributes(Modality="CT", SeriesDescription="Diagnostic"))


# -- the routed action a job stores ----------------------------------------------------------

DESTINATIONS = [
    {"name": "PACS", "ae_title": "ORTHANC", "host": "10.0.0.5", "port": 4242, "accepts_labelmap_seg": True,
     "max_age_hours": 7, "retry_backoff_seconds": 3, "retry_max_backoff_seconds": 60, "timeout_seconds": 12},
    {"name": "TPS", "ae_title": "TPS_AE", "host": "10.0.0.6", "port": 104},
]
TEMPLATES = [{"name": "sbrt", "include": ["Lung_L", "SpinalCord"], "rename": {"SpinalCord": "Cord"},
              "merge": {"Lung_L": ["Lung_LUL", "Lung_LLL"]}, "outputs": ["RTSTRUCT", "SEG"],
              "seg_type": "FRACTIONAL"},
             {"name": "names-only", "rename": {"SpinalCord": "Myelon"}}]


def _settings(tmp_path: Path, *rules: dict[str, object]) -> Settings:
    return make_settings(tmp_path, destinations=DESTINATIONS, templates=TEMPLATES, routing={"rules": list(rules)})


def test_labelmap_falls_back_to_binary_where_a_destination_does_not_take_it(tmp_path: Path) -> None:
    settings = _settings(tmp_path, {"name": "both", "model": "builtin", "destinations": ["PACS", "TPS"],
                                    "seg_type": "LABELMAP"},
                         {"name": "tps", "model": "builtin", "destinations": ["TPS"], "seg_type": "LABELMAP"},
                         {"name": "none", "model": "builtin", "destinations": [], "seg_type": "LABELMAP"})
    both, tps, none = route(settings, SeriesAttributes(Modality="CT"))
    assert [(d.name, d.seg_type) for d in both.destinations] == [("PACS", "LABELMAP"), ("TPS", "BINARY")]
    assert both.seg_types == ("LABELMAP", "BINARY")  # the requested variant first
    assert [(d.name, d.seg_type) for d in tps.destinations] == [("TPS", "BINARY")]
    assert tps.seg_types == ("BINARY",)  # no destination takes the LABELMAP: it is not written
    assert (none.destinations, none.seg_types) == ((), ("LABELMAP",))


def test_template_seg_type_and_outputs_override_the_rule(tmp_path: Path) -> None:
    settings = _settings(tmp_path, {"name": "sbrt", "model": "builtin", "destinations": ["PACS", "TPS"],
                                    "seg_type": "LABELMAP", "outputs": ["SEG", "SR"], "template": "sbrt"},
                         {"name": "plain", "model": "builtin", "destinations": ["PACS", "TPS"],
                          "seg_type": "LABELMAP", "outputs": ["SEG", "SR"], "template": "names-only"})
    sbrt, plain = route(settings, SeriesAttributes(Modality="CT"))
    assert (sbrt.seg_type, sbrt.outputs) == ("FRACTIONAL", ("RTSTRUCT", "SEG"))
    assert [d.seg_type for d in sbrt.destinations] == ["FRACTIONAL", "FRACTIONAL"]  # no fallback for FRACTIONAL
    assert sbrt.seg_types == ("FRACTIONAL",)
    # a template that names no SEG type nor outputs leaves the rule's
    assert (plain.seg_type, plain.outputs, plain.seg_types) == ("LABELMAP", ("SEG", "SR"), ("LABELMAP", "BINARY"))


def test_the_action_holds_copies_of_everything_the_worker_needs(tmp_path: Path) -> None:
    settings = _settings(tmp_path, {"name": "sbrt", "model": "builtin", "destinations": ["PACS"],
                                    "template": "sbrt", "seg_max_segments": 4, "match": {"Modality": "CT"}},
                         {"name": "mr", "model": "builtin", "destinations": ["PACS"], "match": {"Modality": "MR"}})
    (action,) = route(settings, SeriesAttributes(Modality="CT"))
    assert (action.rule_name, action.model_id, action.model_version, action.seg_max_segments) == \
        ("sbrt", "builtin", "", 4)
    assert action.template is not None
    assert action.template.model_dump() == {
        "name": "sbrt", "map": {}, "include": ("Lung_L", "SpinalCord"), "rename": {"SpinalCord": "Cord"},
        "merge": {"Lung_L": ("Lung_LUL", "Lung_LLL")}, "outputs": ("RTSTRUCT", "SEG"), "seg_type": "FRACTIONAL"}
    (pacs,) = action.destinations
    assert pacs.model_dump() == {"name": "PACS", "ae_title": "ORTHANC", "host": "10.0.0.5", "port": 4242,
                                 "timeout_seconds": 12.0, "retry_backoff_seconds": 3.0, "seg_type": "FRACTIONAL",
                                 "max_age_hours": 7.0, "retry_max_backoff_seconds": 60.0, "tls": None,
                                 "seg_transfer_syntaxes": (), "accepts_labelmap_seg": True}
    stored = action.to_json()
    assert RoutedAction.from_json(stored) == action
    # the stored text is plain data: nothing in it refers to the settings objects
    assert json.loads(stored)["template"]["rename"] == {"SpinalCord": "Cord"}


def test_the_action_is_frozen_and_refuses_unknown_fields(tmp_path: Path) -> None:
    settings = _settings(tmp_path, {"name": "r", "model": "builtin", "destinations": ["TPS"]})
    (action,) = route(settings, SeriesAttributes(Modality="CT"))
    with pytest.raises(ValidationError, match="frozen"):
        action.rule_name = "other"
    with pytest.raises(ValidationError, match="frozen"):
        action.destinations[0].port = 11
    document = json.loads(action.to_json())
    with pytest.raises(RoutingError, match="cannot be read"):
        RoutedAction.from_json(json.dumps({**document, "priority": 1}))
    with pytest.raises(RoutingError, match="cannot be read"):
        RoutedAction.from_json("{not json")


def test_a_snapshot_of_an_earlier_version_with_max_attempts_still_reads(tmp_path: Path) -> None:
    """Jobs queued before deliveries retried by age keep their address; they get the default age and cap."""
    settings = _settings(tmp_path, {"name": "r", "model": "builtin", "destinations": ["PACS"]})
    (action,) = route(settings, SeriesAttributes(Modality="CT"))
    document = json.loads(action.to_json())
    (old,) = document["destinations"]
    for key in ("max_age_hours", "retry_max_backoff_seconds"):
        del old[key]
    old["max_attempts"] = 5
    (pacs,) = RoutedAction.from_json(json.dumps(document)).destinations
    assert (pacs.host, pacs.port, pacs.max_age_hours, pacs.retry_max_backoff_seconds) == ("10.0.0.5", 4242, 24.0, 900.0)


def test_a_fallback_rule_applies_only_when_no_other_rule_matched() -> None:
    rules = (RoutingRule(name="lung", model="builtin", destinations=(), match={"BodyPartExamined": "CHEST"}),
             RoutingRule(name="rest", model="builtin", destinations=(), fallback=True))
    chest = SeriesAttributes(Modality="CT", BodyPartExamined="CHEST")
    pelvis = SeriesAttributes(Modality="CT", BodyPartExamined="PELVIS")
    assert [r.name for r in select_rules(rules, chest)] == ["lung"]
    assert [r.name for r in select_rules(rules, pelvis)] == ["rest"]


def test_explain_gives_each_rule_its_verdict_and_reasons() -> None:
    rules = (RoutingRule(name="lung", model="builtin", destinations=(), match={"BodyPartExamined": "CHEST",
                                                                                "Modality": "CT"}),
             RoutingRule(name="rest", model="builtin", destinations=(), fallback=True))
    chest, pelvis = explain(rules, SeriesAttributes(Modality="CT", BodyPartExamined="CHEST")), \
        explain(rules, SeriesAttributes(Modality="CT", BodyPartExamined="PELVIS"))
    assert [(v.rule_name, v.applies) for v in chest] == [("lung", True), ("rest", False)]
    assert chest[1].reasons == ("fallback rule, not used: another rule matched",)
    assert pelvis[0].reasons == ("BodyPartExamined 'PELVIS' does not fit 'CHEST'",)
    assert pelvis[1].applies and "no other rule matched" in pelvis[1].reasons[-1]
