"""The text of notifications: built-in templates per event, rendering with ``str.format``, the webhook's JSON.

A template's fields are the event's facts (``EVENT_FIELDS`` in :mod:`dicom_node.settings.notifications`,
checked when the config loads) plus ``event``, ``node`` (the AE title) and ``at`` (UTC). A fact an event
lacks renders as ``?``. The built-in texts name no patient, and no study beyond the node's own job ids.
"""

from __future__ import annotations

import json
import string
from collections.abc import Mapping
from typing import Any

from dicom_node.settings import MessageTemplate

DEFAULT_TEMPLATES: dict[str, tuple[str, str]] = {
    "review_needed": (
        "[{node}] Job {job_id} waits for review (rule {rule})",
        "The contours of job {job_id} (rule {rule}, model {model}) wait for review.\n"
        "Structures: {structures}\n\n"
        "Nothing is sent before a reviewer decides: open the review queue of the dicom-node web app.\n\n"
        "{node}, {at}"),
    "job_failed": (
        "[{node}] Job {job_id} failed (rule {rule})",
        "Job {job_id} (rule {rule}, model {model}) failed after {attempts} attempt(s):\n"
        "{error_class}: {error}\n\n"
        "Nothing of it was sent. `dicom-node jobs` shows it; `dicom-node retry {job_id}` runs it again.\n\n"
        "{node}, {at}"),
    "delivery_dead": (
        "[{node}] Job {job_id}: delivery to {destination} failed",
        "The outputs of job {job_id} (rule {rule}) could not be sent to {destination}: the {kind} failed "
        "{attempts} time(s) until its retries ran out. Last error: {error}\n\n"
        "`dicom-node deliveries --job {job_id}` lists them; `dicom-node retry {job_id}` sends them again "
        "once the destination is back.\n\n"
        "{node}, {at}"),
    "disk_low": (
        "[{node}] Disk low: {free_mb} MB free",
        "The storage volume has {free_mb} MB free, below the emergency threshold of {threshold_mb} MB, and "
        "nothing more can be removed: {waiting_series} series wait for their jobs or deliveries.\n"
        "Below node.min_free_disk_mb the node refuses incoming images. Free disk or fix what holds the "
        "deliveries up (`dicom-node deliveries --state dead`).\n\n"
        "{node}, {at}"),
    "superseded": (
        "[{node}] Outputs of job {job_id} replaced by job {new_job_id} (rule {rule})",
        "The series of job {job_id} (rule {rule}) received more images after its outputs were delivered. "
        "Job {new_job_id} makes a new version, sent as a revision of them: the objects of job {job_id} at "
        "the destinations are outdated.\n\n"
        "{node}, {at}"),
}


class _Facts(dict[str, Any]):
    """A fact the event lacks renders as '?' rather than failing the message."""

    def __missing__(self, key: str) -> str:
        return "?"


def render(kind: str, facts: Mapping[str, Any], template: MessageTemplate | None = None) -> tuple[str, str]:
    """(subject, text) of an event: the configured template where it has one, else the built-in one."""
    subject, body = DEFAULT_TEMPLATES[kind]
    if template is not None:
        subject, body = template.subject or subject, template.body or body
    values = _Facts(facts)
    formatter = string.Formatter()
    title = formatter.vformat(subject, (), values)
    return " ".join(title.split())[:200], formatter.vformat(body, (), values)


def webhook_body(event_id: int, kind: str, facts: Mapping[str, Any], title: str, text: str) -> str:
    """The JSON a webhook receives (and whose exact bytes are signed)."""
    document = {"event": kind, "event_id": event_id, "node": facts.get("node", ""), "at": facts.get("at", ""),
                "subject": title, "text": text,
                "facts": {k: v for k, v in sorted(facts.items()) if k not in ("event", "node", "at")}}
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"))
