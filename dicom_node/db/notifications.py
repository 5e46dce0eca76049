"""The outbox SQL: record an event in the caller's transaction, turn events into messages, lease and settle them.

:func:`record_event` and :func:`record_job_event` add a row to the session they are given: the state change
they tell of and the event commit together (or neither does). A repeat of the same ``kind`` and ``subject``
within ``quiet`` is not recorded (disk low is told once, not at every housekeeping run).

The notifier (``dicom_node.notify.outbox``) makes each event's messages with :func:`fan_out` (one conditional
UPDATE marks it, so two workers never fan one event out twice), then leases due messages with
:func:`claim_due` as the sender leases deliveries, and records each outcome with back-off up to a maximum age.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, or_, select, update
from sqlalchemy.orm import Session, selectinload, sessionmaker

from dicom_node.db.index import updated_rows
from dicom_node.db.notification_tables import MessageStatus, NotificationEvent, NotificationMessage
from dicom_node.db.tables import Job, Series, Study, utcnow

log = logging.getLogger(__name__)

FactValue = str | int | float | bool
BATCH = 50


@dataclass(frozen=True)
class MessageSpec:
    """One message an event makes: to a webhook (by name) or an e-mail address."""

    channel: str  # webhook | email
    recipient: str
    title: str
    body: str


def record_event(session: Session, kind: str, *, job_id: int | None = None, rule_name: str = "", subject: str = "",
                 facts: Mapping[str, FactValue] | None = None, quiet: timedelta | None = None) -> int | None:
    """Add an event to the caller's transaction; None when the same kind and subject was recorded within ``quiet``."""
    now = utcnow()
    subject = subject[:200]
    if quiet is not None and subject:
        recent = session.scalar(select(NotificationEvent.id).where(
            NotificationEvent.kind == kind, NotificationEvent.subject == subject,
            NotificationEvent.at >= now - quiet).limit(1))
        if recent is not None:
            return None
    event = NotificationEvent(kind=kind, at=now, subject=subject, job_id=job_id, rule_name=rule_name[:64],
                              facts=json.dumps(dict(facts or {}), sort_keys=True), fanned_out=False, note="")
    session.add(event)
    session.flush()
    return event.id


def record_job_event(session: Session, kind: str, job_id: int, /, *, subject: str = "", quiet: timedelta | None = None,
                     **facts: FactValue) -> int | None:
    """An event about a job: its id, rule and model are facts of it, besides those given."""
    row = session.execute(select(Job.rule_name, Job.model_id).where(Job.id == job_id)).first()
    rule, model = (row[0], row[1]) if row is not None else ("", "")
    return record_event(session, kind, job_id=job_id, rule_name=rule, subject=subject or f"job {job_id}",
                        facts={"job_id": job_id, "rule": rule, "model": model, **facts}, quiet=quiet)


def identifiers_of(session: Session, job_id: int) -> dict[str, str]:
    """Accession number, series description and study date of a job's series (only for include_identifiers)."""
    row = session.execute(select(Study.accession_number, Series.description, Study.study_date)
                          .join(Series, Series.study_id == Study.id).join(Job, Job.series_id == Series.id)
                          .where(Job.id == job_id)).first()
    if row is None:
        return {}
    return {"accession_number": row[0], "series_description": row[1], "study_date": row[2]}


def fan_out(factory: sessionmaker[Session],
            make: Callable[[Session, NotificationEvent], tuple[list[MessageSpec], str]], limit: int = BATCH) -> int:
    """Make the messages of events that have none yet, each event once; returns how many events were taken."""
    taken = 0
    with factory.begin() as session:
        ids = session.scalars(select(NotificationEvent.id).where(NotificationEvent.fanned_out.is_(False))
                              .order_by(NotificationEvent.id).limit(limit)).all()
        for event_id in ids:
            won = session.execute(update(NotificationEvent).where(NotificationEvent.id == event_id,
                                                                  NotificationEvent.fanned_out.is_(False))
                                  .values(fanned_out=True).execution_options(synchronize_session=False))
            if updated_rows(won) != 1:
                continue  # another worker's notifier took it
            taken += 1
            event = session.get(NotificationEvent, event_id)
            if event is None:
                continue
            session.refresh(event)
            try:
                specs, note = make(session, event)
            except Exception as exc:  # a template or config fault: the event says so, the others go on
                log.error("notification event %d (%s): no message made: %s", event_id, event.kind, exc)
                specs, note = [], f"no message made: {type(exc).__name__}: {exc}"
            event.note = note[:200]
            now = utcnow()
            session.add_all(NotificationMessage(event_id=event_id, channel=s.channel, recipient=s.recipient[:200],
                                                title=s.title[:200], body=s.body, status=MessageStatus.PENDING,
                                                attempts=0, queued_at=now, next_attempt_at=now, last_error="",
                                                lease_owner="") for s in specs)
    return taken


def _free(now: datetime) -> tuple[ColumnElement[bool], ...]:
    return (NotificationMessage.status == MessageStatus.PENDING, NotificationMessage.next_attempt_at <= now,
            or_(NotificationMessage.lease_until.is_(None), NotificationMessage.lease_until < now))


def claim_due(factory: sessionmaker[Session], owner: str, lease: timedelta,
              limit: int = BATCH) -> list[NotificationMessage]:
    """Lease up to ``limit`` due messages for ``owner`` (one conditional UPDATE: never two holders)."""
    now = utcnow()
    with factory.begin() as session:
        candidates = (select(NotificationMessage.id).where(*_free(now)).order_by(NotificationMessage.id).limit(limit))
        claimed = session.scalars(
            update(NotificationMessage).where(NotificationMessage.id.in_(candidates), *_free(now))
            .values(lease_owner=owner, lease_until=now + lease)
            .returning(NotificationMessage.id).execution_options(synchronize_session=False)).all()
        if not claimed:
            return []
        return list(session.scalars(select(NotificationMessage).options(selectinload(NotificationMessage.event))
                                    .where(NotificationMessage.id.in_(claimed)).order_by(NotificationMessage.id)))


def mark_sent(factory: sessionmaker[Session], message_id: int, owner: str) -> None:
    with factory.begin() as session:
        session.execute(update(NotificationMessage)
                        .where(NotificationMessage.id == message_id, NotificationMessage.lease_owner == owner)
                        .values(status=MessageStatus.SENT, sent_at=utcnow(), attempts=NotificationMessage.attempts + 1,
                                last_error="", lease_owner="", lease_until=None))


def record_failure(factory: sessionmaker[Session], message_id: int, owner: str, error: str,
                   delay: Callable[[int], float], max_age: timedelta) -> MessageStatus:
    """One failed try: wait ``delay(attempts)`` seconds, or DEAD once the message is ``max_age`` old."""
    now = utcnow()
    with factory.begin() as session:
        row = session.get(NotificationMessage, message_id, with_for_update=True)
        if row is None:
            return MessageStatus.DEAD
        if row.status != MessageStatus.PENDING or row.lease_owner != owner:
            return row.status
        row.attempts += 1
        row.last_error = error[:2000]
        row.lease_owner, row.lease_until = "", None
        deadline = row.queued_at + max_age
        if now >= deadline:
            row.status = MessageStatus.DEAD
        else:
            row.next_attempt_at = min(now + timedelta(seconds=delay(row.attempts)), deadline)
        return row.status


def recent_events(session: Session, limit: int = 50, kind: str | None = None) -> list[NotificationEvent]:
    """The newest events first, with their messages."""
    query = select(NotificationEvent).options(selectinload(NotificationEvent.messages))
    if kind:
        query = query.where(NotificationEvent.kind == kind)
    return list(session.scalars(query.order_by(NotificationEvent.id.desc()).limit(limit)))
