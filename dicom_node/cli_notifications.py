"""``dicom-node notifications``: recent notification events and what became of each message.

One line per event (newest first): when, which event, the job and rule it is about, then one line per
message: channel, recipient, state, tries, next try or when it was sent, and the last error. An event
that made no message says why (no recipients, event not enabled, recipient not configured).
``--send-test RECIPIENT`` sends one test message now (event ``test``, message id 0), outside the outbox.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from dicom_node.db.notification_tables import MessageStatus, NotificationMessage
from dicom_node.settings import Settings
from dicom_node.settings.notifications import EVENT_KINDS, MAILTO


def _out(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def add_parsers(add: Callable[[str, str], argparse.ArgumentParser]) -> None:
    p = add("notifications", "list recent notification events and the state of each message")
    p.add_argument("--event", choices=EVENT_KINDS, default=None, help="only events of this kind")
    p.add_argument("--limit", type=int, default=30)
    p.add_argument("--send-test", metavar="RECIPIENT", default=None,
                   help="send a test message now to a webhook name or mailto:ADDRESS, and say what happened")


def cmd_notifications(settings: Settings, args: argparse.Namespace) -> int:
    from dicom_node.db.engine import open_index
    from dicom_node.db.notifications import recent_events

    if args.send_test:
        return _send_test(settings, args.send_test)
    factory = open_index(settings.node.database_url)
    with factory() as session:
        events = recent_events(session, args.limit, args.event)
    _out(f"{'id':>6}  {'at (UTC)':<19}  {'event':<14} {'job':>5}  rule / messages")
    for event in events:
        job = str(event.job_id) if event.job_id is not None else "-"
        _out(f"{event.id:>6}  {event.at:%Y-%m-%d %H:%M:%S}  {event.kind:<14} {job:>5}  {event.rule_name or '-'}"
             + ("" if event.fanned_out else "  (not yet sent: the worker's notifier takes it)"))
        for message in event.messages:
            _out(f"{'':>6}  {message.channel} {message.recipient}: {_state(message)}")
        if event.note:
            _out(f"{'':>6}  {event.note}")
    return 0


def _send_test(settings: Settings, recipient: str) -> int:
    """One message straight to the recipient (not through the outbox): the channel's settings work or not."""
    from datetime import UTC, datetime

    from dicom_node.notify.channels import NotificationError, post_webhook, send_email
    from dicom_node.notify.messages import webhook_body

    config, node = settings.notifications, settings.node.ae_title
    title = f"[{node}] Test notification"
    text = f"A test message from dicom-node {node}: this channel works.\n"
    facts = {"event": "test", "node": node, "at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")}
    try:
        if recipient.startswith(MAILTO):
            if not config.email.host:
                raise NotificationError("[notifications.email] has no host")
            send_email(config.email, recipient[len(MAILTO):], title, text)
        else:
            hook = config.webhook(recipient)
            if hook is None:
                known = ", ".join(w.name for w in config.webhooks) or "none"
                raise NotificationError(f"{recipient!r} is not a configured webhook (known: {known})")
            post_webhook(hook, webhook_body(0, "test", facts, title, text), "test", 0)
    except NotificationError as exc:
        _out(f"test message to {recipient} failed: {exc}")
        return 1
    _out(f"test message sent to {recipient}")
    return 0


def _state(message: NotificationMessage) -> str:
    tries = f"{message.attempts} tr{'y' if message.attempts == 1 else 'ies'}"
    if message.status == MessageStatus.SENT and message.sent_at is not None:
        return f"sent {message.sent_at:%Y-%m-%d %H:%M:%S} after {tries}"
    error = f": {message.last_error}" if message.last_error else ""
    if message.status == MessageStatus.PENDING:
        return f"pending after {tries}, next try {message.next_attempt_at:%H:%M:%S}{error}"
    return f"dead after {tries}{error}"


def summary(settings: Settings) -> str:
    """What check-config says of [notifications]."""
    config = settings.notifications
    channels = [f"webhook {w.name} ({w.url.split('?')[0]})" for w in config.webhooks]
    if config.email.host:
        channels.append(f"e-mail via {config.email.host}:{config.email.port} ({config.email.security})")
    if not channels:
        return "no channels (no notifications are sent)"
    rules = sum(1 for rule in settings.rules if rule.notify)
    return (f"{', '.join(channels)}; events {', '.join(config.events) or 'none'}; "
            f"defaults: {', '.join(config.defaults) or 'none'}; {rules} rule(s) name their own recipients")


COMMANDS = {"notifications": cmd_notifications}
