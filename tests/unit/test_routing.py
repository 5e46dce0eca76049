from __future__ import annotations

import pytest
from pydantic import ValidationError

from dicom_node.routing import MATCHABLE_KEYWORDS, SeriesAttributes, select_rules
from dicom_node.settings import RoutingRule


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
