"""[notifications]: who is told when a job waits for review, fails, cannot be delivered, when disk runs low and
when delivered outputs are replaced by a new version; through webhooks (JSON signed with HMAC-SHA256) and e-mail.

Recipients are named per routing rule (``notify = ["ops-hook", "mailto:physics@hospital.org"]``); node-level
events (disk low), and events of rules that name nobody, go to ``[notifications] defaults``. Message text comes
from ``str.format`` templates per event (``{job_id}``, ``{rule}``, ...); the fields each event offers are in
:data:`EVENT_FIELDS`, and a template naming another field is a config error. Messages carry no patient name,
ID or birth date; accession number and series description only where ``include_identifiers = true``.

:func:`notification_problems` checks what spans tables (recipients named, secrets and password files readable,
templates' fields) and is called by the loader with the other checks.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, ConfigDict, Field, StrictBool, StrictStr, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass

from dicom_node.settings.problems import Problem
from dicom_node.settings.values import (
    MaxAgeHours,
    MaxBackoffSeconds,
    Name,
    OptionalConfigPath,
    Port,
    Seconds,
    problem,
)

TABLE = ConfigDict(extra="forbid")
MAILTO = "mailto:"
EVENT_KINDS = ("review_needed", "job_failed", "delivery_dead", "disk_low", "superseded")
SECURITY_MODES = ("starttls", "tls", "none")
# every event's message may use these; the web of a job is not known to the node, so no link is offered
COMMON_FIELDS = ("event", "node", "at")
JOB_FIELDS = ("job_id", "rule", "model")
EVENT_FIELDS: dict[str, tuple[str, ...]] = {
    "review_needed": (*COMMON_FIELDS, *JOB_FIELDS, "structures"),
    "job_failed": (*COMMON_FIELDS, *JOB_FIELDS, "error_class", "error", "attempts"),
    "delivery_dead": (*COMMON_FIELDS, *JOB_FIELDS, "destination", "kind", "attempts", "error"),
    "disk_low": (*COMMON_FIELDS, "free_mb", "threshold_mb", "waiting_series"),
    "superseded": (*COMMON_FIELDS, *JOB_FIELDS, "new_job_id"),
}
# header values that identify a study: only in messages where include_identifiers = true (job events only)
IDENTIFIER_FIELDS = ("accession_number", "series_description", "study_date")

_ADDRESS_RE = re.compile(r"^[^@\s<>,;]+@[^@\s<>,;]+\.[^@\s<>,;]+$")
_URL_RE = re.compile(r"^https?://[^\s/]+(/\S*)?$")


def _event_kind(value: str) -> str:
    if value not in EVENT_KINDS:
        raise problem(f"{value!r} is not one of {', '.join(EVENT_KINDS)}")
    return value


def _address(value: str) -> str:
    if not _ADDRESS_RE.match(value):
        raise problem(f"{value!r} is not an e-mail address (name@host.domain)")
    return value


def _recipient(value: str) -> str:
    """A webhook's name, or mailto:ADDRESS."""
    if value.startswith(MAILTO):
        _address(value[len(MAILTO):])
        return value
    if not value.strip():
        raise problem("must be a webhook's name or mailto:ADDRESS, got ''")
    return value


def _url(value: str) -> str:
    if not _URL_RE.match(value):
        raise problem(f"{value!r} is not an http:// or https:// URL")
    return value


def _security(value: str) -> str:
    if value not in SECURITY_MODES:
        raise problem(f"{value!r} is not one of {', '.join(SECURITY_MODES)}")
    return value


def _address_or_empty(value: str) -> str:
    return value if value == "" else _address(value)


EventKind = Annotated[StrictStr, Field(json_schema_extra={"enum": list(EVENT_KINDS)}), AfterValidator(_event_kind)]
Recipient = Annotated[StrictStr, Field(json_schema_extra={"minLength": 1}), AfterValidator(_recipient)]
WebhookUrl = Annotated[StrictStr, Field(json_schema_extra={"pattern": _URL_RE.pattern}), AfterValidator(_url)]
Security = Annotated[StrictStr, Field(json_schema_extra={"enum": list(SECURITY_MODES)}), AfterValidator(_security)]
EmailAddressOrEmpty = Annotated[StrictStr, AfterValidator(_address_or_empty)]


@dataclass(frozen=True, config=TABLE)
class Webhook:
    """[[notifications.webhooks]]: a URL that receives each event as JSON, POSTed and signed with HMAC-SHA256."""

    name: Name = Field(description="name recipients lists use; unique")
    url: WebhookUrl = Field(description="http:// or https:// URL the JSON is POSTed to")
    secret_file: OptionalConfigPath = Field(
        default=None, description="file holding the HMAC secret (its text, stripped); or secret")
    secret: StrictStr = Field(default="", description="the HMAC secret itself; prefer secret_file")
    timeout_seconds: Seconds = Field(default=10.0, description="connect and answer timeout")


@dataclass(frozen=True, config=TABLE)
class EmailSettings:
    """[notifications.email]: the SMTP server mailto: recipients are sent through; host empty = no e-mail."""

    host: StrictStr = Field(default="", description="SMTP server; empty = no e-mail")
    port: Port = Field(default=587, description="TCP port: 587 for starttls, 465 for tls, 25 for none")
    security: Security = Field(default="starttls", description="starttls, tls (implicit TLS) or none")
    user: StrictStr = Field(default="", description="user to log in as; empty = no login")
    password_file: OptionalConfigPath = Field(default=None, description="file holding the password (stripped)")
    from_address: EmailAddressOrEmpty = Field(default="", description="From: address; required with host")
    ca_file: OptionalConfigPath = Field(
        default=None, description="CA certificates (PEM) the server's certificate is verified against; "
                                  "empty: the system's")
    timeout_seconds: Seconds = Field(default=30.0, description="network timeout")


@dataclass(frozen=True, config=TABLE)
class MessageTemplate:
    """[notifications.templates.EVENT]: a message's subject and text; empty keeps the built-in one."""

    subject: StrictStr = Field(default="", description="subject (one line); str.format fields of the event")
    body: StrictStr = Field(default="", description="text; str.format fields of the event")


@dataclass(frozen=True, config=TABLE)
class NotificationSettings:
    """[notifications]: channels, default recipients, which events are sent, templates and retries."""

    defaults: tuple[Recipient, ...] = Field(
        default=(), description="recipients of node events (disk_low) and of rules that name none")
    events: tuple[EventKind, ...] = Field(default=EVENT_KINDS, description="events that are sent at all")
    webhooks: tuple[Webhook, ...] = Field(default=(), description="the [[notifications.webhooks]] tables")
    email: EmailSettings = Field(default_factory=EmailSettings, description="[notifications.email]: SMTP")
    templates: dict[EventKind, MessageTemplate] = Field(
        default_factory=dict, description="event -> subject and body; unset: the built-in text")
    include_identifiers: StrictBool = Field(
        default=False, description="templates may use accession_number, series_description, study_date")
    disk_low_repeat_hours: MaxAgeHours = Field(
        default=24.0, description="disk_low is sent at most once this often while the disk stays low")
    retry_backoff_seconds: Seconds = Field(
        default=10.0, description="wait before the first retry of a message; doubles each retry")
    retry_max_backoff_seconds: MaxBackoffSeconds = Field(
        default=300.0, description="longest wait between two tries of a message")
    max_age_hours: MaxAgeHours = Field(default=24.0, description="a message not sent this long is dead")
    poll_interval_seconds: Seconds = Field(default=2.0, description="how often the worker looks for messages")

    def webhook(self, name: str) -> Webhook | None:
        return next((w for w in self.webhooks if w.name == name), None)


def template_fields(text: str) -> list[str]:
    """The fields a str.format template names; ValueError for a malformed one or one with . or [ in a field."""
    fields = []
    for _literal, field, _spec, _conversion in string.Formatter().parse(text):
        if field is None:
            continue
        if not field or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", field):
            raise ValueError(f"{{{field}}} is not a plain field name (no positions, attributes or indexes)")
        fields.append(field)
    return fields


def template_problem(kind: str, text: str, identifiers: bool) -> str | None:
    """What is wrong with one template of an event, or None."""
    try:
        fields = template_fields(text)
    except ValueError as exc:
        return f"not a valid template: {exc}"
    allowed = set(EVENT_FIELDS[kind])
    for field in fields:
        if field in IDENTIFIER_FIELDS and kind != "disk_low":
            if not identifiers:
                return f"{{{field}}} identifies a study: it needs notifications.include_identifiers = true"
        elif field not in allowed:
            return f"{{{field}}} is not a field of {kind} (known: {', '.join(EVENT_FIELDS[kind])})"
    return None


def notification_problems(data: dict[str, Any], base: Path) -> list[Problem]:
    """Recipients that name no webhook (or mailto: without e-mail), unreadable secrets, bad templates."""
    raw = data.get("notifications", {})
    if not isinstance(raw, dict):
        return []
    try:
        settings = TypeAdapter(NotificationSettings).validate_python(raw, context={"base": base})
    except ValidationError:  # the document's own errors say why
        settings = None
    problems = list(_webhook_names(raw.get("webhooks")))
    if settings is not None:
        problems.extend(_channel_problems(settings))
        problems.extend(_recipient_problems(settings, "notifications.defaults", settings.defaults))
        routing = data.get("routing", {})
        problems.extend(rule_recipient_problems(settings, routing.get("rules", []) if isinstance(routing, dict)
                                                else []))
        for kind, template in settings.templates.items():
            for key in ("subject", "body"):
                wrong = template_problem(kind, getattr(template, key), settings.include_identifiers)
                if wrong:
                    problems.append(Problem(f"notifications.templates.{kind}.{key}", wrong))
    return problems


def rule_recipient_problems(settings: NotificationSettings, rules: object) -> list[Problem]:
    """Recipients of ``[[routing.rules]]`` tables (raw TOML) that are not configured; also for live config edits."""
    problems: list[Problem] = []
    for index, rule in enumerate(rules if isinstance(rules, list) else []):
        notify = rule.get("notify", []) if isinstance(rule, dict) else []
        if isinstance(notify, list):
            problems.extend(_recipient_problems(settings, f"routing.rules[{index}].notify",
                                                [n for n in notify if isinstance(n, str)]))
    return problems


def _webhook_names(raw: object) -> Iterator[Problem]:
    seen: dict[str, int] = {}
    for index, table in enumerate(raw if isinstance(raw, list) else []):
        name = table.get("name") if isinstance(table, dict) else None
        if isinstance(name, str):
            if name in seen:
                yield Problem(f"notifications.webhooks[{index}].name",
                              f"duplicate webhook name {name!r} (also notifications.webhooks[{seen[name]}])")
            seen.setdefault(name, index)


def _channel_problems(settings: NotificationSettings) -> Iterator[Problem]:
    for index, hook in enumerate(settings.webhooks):
        where = f"notifications.webhooks[{index}]"
        if bool(hook.secret) == (hook.secret_file is not None):
            yield Problem(f"{where}.secret_file", "give exactly one of secret_file and secret: every message is "
                                                  "signed")
        elif hook.secret_file is not None:
            wrong = _unreadable(hook.secret_file)
            if wrong:
                yield Problem(f"{where}.secret_file", wrong)
    email = settings.email
    if email.host:
        if not email.from_address:
            yield Problem("notifications.email.from_address", "missing (required when host is set)")
        if bool(email.user) != (email.password_file is not None):
            yield Problem("notifications.email.password_file", "user and password_file go together")
        elif email.password_file is not None:
            wrong = _unreadable(email.password_file)
            if wrong:
                yield Problem("notifications.email.password_file", wrong)
            if email.security == "none":
                yield Problem("notifications.email.security", "none would send the password in clear: use "
                                                              "starttls or tls")


def _unreadable(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        return f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}"
    return None if text else f"{path} is empty"


def _recipient_problems(settings: NotificationSettings, where: str, recipients: Any) -> Iterator[Problem]:
    names = [w.name for w in settings.webhooks]
    for position, recipient in enumerate(recipients):
        if recipient.startswith(MAILTO):
            if not settings.email.host:
                yield Problem(f"{where}[{position}]", f"{recipient!r} needs [notifications.email] host")
        elif recipient not in names:
            yield Problem(f"{where}[{position}]", f"{recipient!r} is not a configured webhook (known: "
                                                  f"{', '.join(names) or 'none'}) nor mailto:ADDRESS")
