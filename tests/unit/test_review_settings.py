"""A routing rule's review fields: checked at load, copied into the job's routed action, kept by the rule form."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from starlette.datastructures import FormData

from dicom_node.errors import ConfigError
from dicom_node.live_config import settings_with, tables_of
from dicom_node.routing import RoutedAction, routed_action
from dicom_node.settings import parse_settings
from dicom_node.web.forms import rule_table
from tests.conftest import make_settings, settings_dict

PACS = {"name": "PACS", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242}


def _rule(**extra: Any) -> dict[str, Any]:
    return {"name": "prostate", "model": "builtin", "destinations": ["PACS"], **extra}


def _problems(tmp: Path, **extra: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_settings(settings_dict(tmp, destinations=[PACS], routing={"rules": [_rule(**extra)]}), tmp)
    return [line.strip() for line in str(caught.value).splitlines()[1:]]


def test_a_rule_sends_at_once_unless_it_asks_for_review(tmp_path: Path) -> None:
    plain = make_settings(tmp_path, destinations=[PACS], routing={"rules": [_rule()]}).rules[0]
    assert (plain.review, plain.reviewers) == ("none", ())
    held = make_settings(tmp_path, destinations=[PACS], routing={"rules": [_rule(
        review="required", reviewers=["phil", "rt.physics@hospital.example.org"])]}).rules[0]
    assert (held.review, held.reviewers) == ("required", ("phil", "rt.physics@hospital.example.org"))


@pytest.mark.parametrize(("extra", "expected"), [
    ({"review": "maybe"}, "routing.rules[0].review: 'maybe' is not one of none, required"),
    ({"review": "Required"}, "routing.rules[0].review: 'Required' is not one of none, required"),
    ({"reviewers": ["dr who"]}, "routing.rules[0].reviewers[0]: 'dr who' is neither a user name"),
    ({"reviewers": ["phil@localhost"]}, "routing.rules[0].reviewers[0]: 'phil@localhost' is not an e-mail address"),
    ({"reviewers": ["a@b@c.org"]}, "routing.rules[0].reviewers[0]: 'a@b@c.org' is not an e-mail address"),
    ({"reviewers": ["phil", "ada", "phil"]}, "routing.rules[0].reviewers: phil named more than once"),
])
def test_wrong_review_fields_are_reported_on_their_path(tmp_path: Path, extra: dict[str, Any], expected: str) -> None:
    problems = _problems(tmp_path, **extra)
    assert len(problems) == 1 and problems[0].startswith(expected), problems


def test_the_routed_action_carries_the_review_and_old_snapshots_send_at_once(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, destinations=[PACS], routing={"rules": [_rule(
        review="required", reviewers=["phil"])]})
    action = routed_action(settings.rules[0], settings)
    again = RoutedAction.from_json(action.to_json())
    assert again.review_required and again.reviewers == ("phil",)
    old = action.model_dump(mode="json")
    del old["review"], old["reviewers"]  # a job routed before review existed
    assert not RoutedAction.model_validate(old).review_required


def test_the_rule_form_and_the_config_tables_keep_the_review_fields(tmp_path: Path) -> None:
    form = FormData([("name", "prostate"), ("model", "builtin"), ("destinations", "PACS"), ("review", "required"),
                     ("reviewers", "phil, rt.physics@hospital.example.org")])
    table = rule_table(form)
    assert table["review"] == "required" and table["reviewers"] == ["phil", "rt.physics@hospital.example.org"]
    assert rule_table(FormData([("name", "x")]))["review"] == "none"
    base = make_settings(tmp_path, destinations=[PACS])
    live = settings_with(base, {"destination": [PACS], "rule": [table], "template": []})
    exported = tables_of(live)["rule"][0]
    assert exported["review"] == "required" and exported["reviewers"] == ["phil", "rt.physics@hospital.example.org"]
    assert settings_with(base, tables_of(live)).rules == live.rules
