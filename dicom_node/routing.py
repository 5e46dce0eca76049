"""Routing: which rules (model + outputs + destinations) apply to a complete series. Pure.

Rules are evaluated in the order of the config and every matching rule produces one job. A rule's
``match`` maps DICOM keywords to case-insensitive shell-style patterns (``*``, ``?``); a rule
without ``match`` matches every CT series.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from dicom_node.settings import MATCH_KEYWORDS, RoutingRule


@dataclass(frozen=True)
class SeriesAttributes:
    """The attributes rules may match on, as indexed at receive time."""

    Modality: str = ""
    BodyPartExamined: str = ""
    SeriesDescription: str = ""

    def get(self, keyword: str) -> str | None:
        return getattr(self, keyword, None) if keyword in self.__dataclass_fields__ else None


# the keys a rule's match may name, checked when the config is loaded: the fields above (a test holds them equal)
MATCHABLE_KEYWORDS = MATCH_KEYWORDS


def rule_matches(rule: RoutingRule, series: SeriesAttributes) -> bool:
    for keyword, pattern in rule.match.items():
        value = series.get(keyword)
        if value is None or not fnmatchcase(value.upper(), pattern.upper()):
            return False
    return True


def select_rules(rules: tuple[RoutingRule, ...], series: SeriesAttributes) -> list[RoutingRule]:
    return [rule for rule in rules if rule_matches(rule, series)]
