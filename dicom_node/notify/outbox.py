"""The notifier: a thread of the worker process that turns recorded events into messages and sends them.

Each round it fans new events out (recipients from the event's rule, ``notify``, or ``[notifications]
defaults``; the text from the templates), then leases the due messages and sends each one. A failed message
waits ``retry_backoff_seconds``, doubling up to ``retry_max_backoff_seconds``, and is dead once it is
``max_age_hours`` old; a peer that is down loses nothing. Nothing here can stop or slow the worker's jobs:
it runs in a thread of its own and every error is logged (kind, message id, recipient's name; never a fact
of the event) and survived.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db import notifications
from dicom_node.db.notification_tables import MessageStatus, NotificationEvent, NotificationMessage
from dicom_node.db.notifications import MessageSpec
from dicom_node.delivery import describe, failure_backoff, lease_owner
from dicom_node.notify.channels import NotificationError, post_webhook, send_email
from dicom_node.notify.messages import render, webhook_body
from dicom_node.settings import Settings
from dicom_node.settings.notifications import MAILTO

log = logging.getLogger(__name__)

LEASE = timedelta(minutes=2)  # longer than a webhook's or the SMTP server's timeout


def recipients_of(settings: Settings, event: NotificationEvent) -> tuple[list[str], str]:
    """Who is told of an event, and a note when nobody is (or why some are left out)."""
    config = settings.notifications
    if event.kind not in config.events:
        return [], f"{event.kind} is not in notifications.events"
    rule = next((r for r in settings.rules if r.name == event.rule_name), None) if event.rule_name else None
    wanted = list(rule.notify if rule is not None and rule.notify else config.defaults)
    if event.kind == "review_needed" and rule is not None:  # reviewers named by e-mail address are told too
        wanted += [f"{MAILTO}{r}" for r in rule.reviewers if "@" in r]
    wanted = list(dict.fromkeys(wanted))
    names = {w.name for w in config.webhooks}
    usable = [r for r in wanted if (r.startswith(MAILTO) and config.email.host) or r in names]
    left_out = [r for r in wanted if r not in usable]
    if not wanted:
        return [], "no recipients (the rule names none, nor notifications.defaults)"
    return usable, f"not configured, left out: {', '.join(left_out)}" if left_out else ""


class Notifier:
    """Fans events out and sends due messages; one round with :meth:`drain_once`, or a thread's loop."""

    def __init__(self, settings: Settings, factory: sessionmaker[Session], worker_id: str,
                 current: Callable[[], Settings] | None = None) -> None:
        self.settings = settings
        self.factory = factory
        self.owner = lease_owner(worker_id)
        self.current = current or (lambda: settings)  # the live config's rules (their notify lists)

    def run_forever(self, stop: threading.Event) -> None:
        log.info("notifier %s sending notifications", self.owner)
        failures = 0
        while not stop.is_set():
            try:
                busy = self.drain_once()
                failures = 0
            except Exception as exc:  # a database fault: the thread outlives it
                failures += 1
                log.error("notification round failed (%d in a row): %s", failures, describe(exc))
                stop.wait(failure_backoff(failures))
                continue
            if not busy:
                stop.wait(self.settings.notifications.poll_interval_seconds)
        log.info("notifier %s stopped", self.owner)

    def drain_once(self) -> int:
        """Fan out new events, send due messages; returns events taken plus messages tried."""
        settings = self._settings()
        taken = notifications.fan_out(self.factory, lambda s, e: self._messages(settings, s, e))
        due = notifications.claim_due(self.factory, self.owner, LEASE)
        for message in due:
            self._send(settings, message)
        return taken + len(due)

    def _settings(self) -> Settings:
        try:
            return self.current()
        except Exception as exc:  # the live config unreadable: the TOML's rules
            log.warning("notifier: live configuration unreadable (%s); using the config file's rules", describe(exc))
            return self.settings

    # -- fan-out -------------------------------------------------------------------------------
    def _messages(self, settings: Settings, session: Session, event: NotificationEvent) -> tuple[list[MessageSpec],
                                                                                                 str]:
        recipients, note = recipients_of(settings, event)
        if not recipients:
            return [], note
        config = settings.notifications
        facts: dict[str, Any] = {**json.loads(event.facts or "{}"), "event": event.kind,
                                 "node": settings.node.ae_title, "at": event.at.strftime("%Y-%m-%d %H:%M:%S UTC")}
        if config.include_identifiers and event.job_id is not None:
            facts.update(notifications.identifiers_of(session, event.job_id))
        title, text = render(event.kind, facts, config.templates.get(event.kind))
        specs = []
        for recipient in recipients:
            if recipient.startswith(MAILTO):
                specs.append(MessageSpec("email", recipient[len(MAILTO):], title, text))
            else:
                specs.append(MessageSpec("webhook", recipient, title, webhook_body(event.id, event.kind, facts,
                                                                                    title, text)))
        return specs, note

    # -- sending -------------------------------------------------------------------------------
    def _send(self, settings: Settings, message: NotificationMessage) -> None:
        config = settings.notifications
        kind = message.event.kind
        try:
            if message.channel == "email":
                if not config.email.host:
                    raise NotificationError("notifications.email has no host")
                send_email(config.email, message.recipient, message.title, message.body)
            else:
                hook = config.webhook(message.recipient)
                if hook is None:
                    raise NotificationError(f"webhook {message.recipient!r} is not configured")
                post_webhook(hook, message.body, kind, message.id)
        except Exception as exc:  # NotificationError, or a fault of ours: this message's failed try
            error = str(exc) if isinstance(exc, NotificationError) else describe(exc)
            delay = _backoff(config.retry_backoff_seconds, config.retry_max_backoff_seconds)
            status = notifications.record_failure(self.factory, message.id, self.owner, error, delay,
                                                  timedelta(hours=config.max_age_hours))
            if status == MessageStatus.DEAD:
                log.error("notification %d (%s to %s) failed: %s; dead", message.id, kind, _who(message), error)
            else:
                log.warning("notification %d (%s to %s) failed: %s; will retry", message.id, kind, _who(message),
                            error)
            return
        notifications.mark_sent(self.factory, message.id, self.owner)
        log.info("notification %d (%s) sent to %s", message.id, kind, _who(message))


def _who(message: NotificationMessage) -> str:
    """A recipient for the log: a webhook's name, or 'e-mail' (an address may name a person)."""
    return f"webhook {message.recipient}" if message.channel == "webhook" else "e-mail"


def _backoff(base: float, cap: float) -> Callable[[int], float]:
    return lambda attempt: float(min(cap, base * 2 ** min(max(0, attempt - 1), 32)))
