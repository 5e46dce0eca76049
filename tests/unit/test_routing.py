from __future__ import annotations

from dicom_node.routing import SeriesAttributes, select_rules
from dicom_node.settings import RoutingRule


def _rule(name: str, **match: str) -> RoutingRule:
    return RoutingRule(name=name, model="builtin", destinations=("PACS",), match=match)


def test_rules_match_case_insensitive_patterns_in_order() -> None:
    rules = (_rule("chest", BodyPartExamined="CHEST|LUNG"), _rule("lung", BodyPartExamined="lung*"),
             _rule("all-ct", Modality="CT"), _rule("mr", Modality="MR"))
    series = SeriesAttributes(Modality="CT", BodyPartExamined="LUNG", SeriesDescription="Thorax 3mm")
    assert [r.name for r in select_rules(rules, series)] == ["lung", "all-ct"]


def test_rule_without_match_takes_everything_and_unknown_keyword_never_matches() -> None:
    series = SeriesAttributes(Modality="CT")
    assert [r.name for r in select_rules((_rule("any"),), series)] == ["any"]
    assert select_rules((_rule("odd", PatientName="*"),), series) == []


def test_description_pattern() -> None:
    rules = (_rule("planning", SeriesDescription="*plan*"),)
    assert select_rules(rules, SeriesAttributes(Modality="CT", SeriesDescription="RT Planning CT"))
    assert not select_rules(rules, SeriesAttributes(Modality="CT", SeriesDescription="Diagnostic"))
