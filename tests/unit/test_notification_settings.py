"""[notifications] as the loader checks it: recipients named, secrets and passwords readable, template fields;
and the built-in messages (every event's text renders from its own fields, without patient identifiers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dicom_node.errors import ConfigError
from dicom_node.notify.channels import signature
from dicom_node.notify.messages import DEFAULT_TEMPLATES, render, webhook_body
from dicom_node.settings import MessageTemplate
from dicom_node.settings.notifications import EVENT_FIELDS, EVENT_KINDS, template_problem
from tests.conftest import make_settings

HOOK = {"name": "ops", "url": "https://hooks.hospital.org/dicom", "secret": "s"}
EMAIL = {"host": "smtp.hospital.org", "from_address": "node@hospital.org"}


def _problems(tmp: Path, notifications: dict[str, Any], notify: list[str] | None = None) -> list[str]:
    rules = [{"name": "ct", "model": "builtin", "destinations": [], "notify": notify or []}]
    try:
        make_settings(tmp, notifications=notifications, routing={"rules": rules})
    except ConfigError as exc:
        return [line.strip() for line in str(exc).splitlines()[1:]]
    return []


def test_a_complete_table_loads(tmp_path: Path) -> None:
    secret = tmp_path / "hook.secret"
    secret.write_text("abc\n")
    settings = make_settings(tmp_path, notifications={
        "webhooks": [{"name": "ops", "url": "https://hooks.hospital.org/x", "secret_file": "hook.secret"}],
        "email": EMAIL, "defaults": ["ops"], "events": ["job_failed", "disk_low"],
        "templates": {"job_failed": {"subject": "{job_id} failed"}}},
        routing={"rules": [{"name": "ct", "model": "builtin", "destinations": [],
                            "notify": ["mailto:physics@hospital.org"]}]})
    config = settings.notifications
    assert config.webhooks[0].secret_file == secret
    assert settings.rules[0].notify == ("mailto:physics@hospital.org",)
    assert config.templates["job_failed"] == MessageTemplate(subject="{job_id} failed")
    assert not config.include_identifiers  # identifiers stay out unless asked for


@pytest.mark.parametrize(("notifications", "notify", "expected"), [
    ({"webhooks": [HOOK]}, ["pager"], "routing.rules[0].notify[0]: 'pager' is not a configured webhook (known: ops) "
                                      "nor mailto:ADDRESS"),
    ({}, ["mailto:physics@hospital.org"], "routing.rules[0].notify[0]: 'mailto:physics@hospital.org' needs "
                                          "[notifications.email] host"),
    ({"email": EMAIL}, ["mailto:physics"], "routing.rules[0].notify[0]: 'physics' is not an e-mail address "
                                           "(name@host.domain)"),
    ({"defaults": ["ops"]}, None, "notifications.defaults[0]: 'ops' is not a configured webhook (known: none) "
                                  "nor mailto:ADDRESS"),
    ({"webhooks": [{**HOOK, "secret": ""}]}, None, "notifications.webhooks[0].secret_file: give exactly one of "
                                                   "secret_file and secret: every message is signed"),
    ({"webhooks": [{**HOOK, "url": "ftp://x"}]}, None, "notifications.webhooks[0].url: 'ftp://x' is not an "
                                                       "http:// or https:// URL"),
    ({"webhooks": [HOOK, HOOK]}, None, "notifications.webhooks[1].name: duplicate webhook name 'ops' "
                                       "(also notifications.webhooks[0])"),
    ({"email": {"host": "smtp.hospital.org"}}, None, "notifications.email.from_address: missing (required when "
                                                     "host is set)"),
    ({"events": ["job_done"]}, None, "notifications.events[0]: 'job_done' is not one of review_needed, job_failed, "
                                     "delivery_dead, disk_low, superseded"),
    ({"templates": {"job_failed": {"body": "{patient_name}"}}}, None,
     "notifications.templates.job_failed.body: {patient_name} is not a field of job_failed (known: event, node, at, "
     "job_id, rule, model, error_class, error, attempts)"),
    ({"templates": {"job_failed": {"subject": "{accession_number}"}}}, None,
     "notifications.templates.job_failed.subject: {accession_number} identifies a study: it needs "
     "notifications.include_identifiers = true"),
    ({"templates": {"disk_low": {"subject": "{job_id.__class__}"}}}, None,
     "notifications.templates.disk_low.subject: not a valid template: {job_id.__class__} is not a plain field name "
     "(no positions, attributes or indexes)"),
])
def test_each_problem_is_reported_with_its_path(tmp_path: Path, notifications: dict[str, Any],
                                                notify: list[str] | None, expected: str) -> None:
    assert _problems(tmp_path, notifications, notify) == [expected]


def test_a_password_needs_a_readable_file_and_never_goes_in_clear(tmp_path: Path) -> None:
    email = {**EMAIL, "user": "node", "password_file": "missing.txt", "security": "none"}
    problems = _problems(tmp_path, {"email": email})
    assert len(problems) == 2
    assert problems[0].startswith("notifications.email.password_file: cannot read ")
    assert problems[1] == "notifications.email.security: none would send the password in clear: use starttls or tls"
    assert _problems(tmp_path, {"email": {**EMAIL, "user": "node"}}) == [
        "notifications.email.password_file: user and password_file go together"]


def test_identifier_fields_are_allowed_only_when_asked_for(tmp_path: Path) -> None:
    templates = {"review_needed": {"body": "{accession_number} {series_description} {study_date}"}}
    assert _problems(tmp_path, {"templates": templates, "include_identifiers": True}) == []
    assert template_problem("disk_low", "{accession_number}", True) is not None  # no study behind a disk


@pytest.mark.parametrize("kind", EVENT_KINDS)
def test_the_built_in_texts_use_only_their_events_fields(kind: str) -> None:
    subject, body = DEFAULT_TEMPLATES[kind]
    assert template_problem(kind, subject, False) is None and template_problem(kind, body, False) is None
    title, text = render(kind, {field: f"<{field}>" for field in EVENT_FIELDS[kind]})
    assert "?" not in title and "<node>" in title
    assert "{" not in text and "<at>" in text


def test_a_missing_fact_renders_as_a_question_mark_and_the_signature_is_hmac_sha256() -> None:
    title, _text = render("job_failed", {"node": "N", "job_id": 3})
    assert title == "[N] Job 3 failed (rule ?)"
    body = webhook_body(7, "job_failed", {"node": "N", "at": "t", "job_id": 3}, title, "x")
    assert body == '{"event":"job_failed","event_id":7,"node":"N","at":"t","subject":"[N] Job 3 failed (rule ?)",' \
                   '"text":"x","facts":{"job_id":3}}'
    # RFC 4231 test case 2
    assert signature(b"Jefe", b"what do ya want for nothing?") == \
        "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
