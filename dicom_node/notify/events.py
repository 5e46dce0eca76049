"""Recording a notification event from anywhere in the node: :func:`record` in the caller's transaction
(preferred: the event commits with the state it tells of), or :func:`emit` in a transaction of its own.

The node records job_failed, delivery_dead, disk_low and superseded itself where those states are written
(``dicom_node.db.jobs``, ``dicom_node.db.deliveries``, ``dicom_node.housekeeping``,
``dicom_node.db.supersession``); review_needed is recorded by the review queue through :func:`review_needed`.
Facts are template fields: never a patient name, ID or birth date.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db import notifications
from dicom_node.db.notifications import FactValue
from dicom_node.delivery import describe
from dicom_node.errors import DicomNodeError
from dicom_node.settings.notifications import EVENT_KINDS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Event:
    """One thing to tell: its kind (``EVENT_KINDS``), the job it is about (if any) and its facts."""

    kind: str
    job_id: int | None = None
    facts: Mapping[str, FactValue] = field(default_factory=dict)
    subject: str = ""  # repeats of the same kind and subject within ``quiet`` are dropped
    quiet: timedelta | None = None

    def __post_init__(self) -> None:
        if self.kind not in EVENT_KINDS:
            raise DicomNodeError(f"unknown notification event {self.kind!r} (known: {', '.join(EVENT_KINDS)})")


def record(session: Session, event: Event) -> int | None:
    """Add the event to ``session``'s transaction; its id, or None when it repeated within its quiet time."""
    if event.job_id is not None:
        return notifications.record_job_event(session, event.kind, event.job_id, subject=event.subject,
                                              quiet=event.quiet, **event.facts)
    return notifications.record_event(session, event.kind, subject=event.subject, facts=event.facts,
                                      quiet=event.quiet)


def emit(factory: sessionmaker[Session], event: Event) -> int | None:
    """Record the event in a transaction of its own; a database fault is logged, never raised."""
    try:
        with factory.begin() as session:
            return record(session, event)
    except Exception as exc:
        log.error("notification event %s could not be recorded: %s", event.kind, describe(exc))
        return None


def review_needed(session: Session, job_id: int, structures: Sequence[str] = ()) -> int | None:
    """A job's outputs wait for review: told to the rule's ``notify`` (or the defaults), in ``session``."""
    return record(session, Event("review_needed", job_id, {"structures": ", ".join(structures) or "-"}))
