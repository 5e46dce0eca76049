"""The delivery SQL: leases, back-off until a maximum age, the dead letter, re-queueing, manual sends.

A worker sends a delivery only while it holds the row's lease. The lease is taken by one
conditional UPDATE (``... WHERE status = 'pending' AND next_attempt_at <= now AND the lease is free
or expired ... RETURNING id``): on SQLite the writes are serialised, and on PostgreSQL a second
UPDATE waits for the first and re-checks the WHERE on the row the first one left, so two workers
never hold one row at once. A worker that dies holding a lease loses it when ``lease_until`` passes.

Recording a row, the job-level statements (enqueue, claim, settle) and the row a job's outputs
make are in :mod:`dicom_node.db.jobs`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db.index import updated_rows
from dicom_node.db.notifications import record_job_event
from dicom_node.db.tables import Delivery, DeliveryStatus, Job, JobStatus, utcnow

log = logging.getLogger(__name__)

CLAIM_BATCH = 50  # rows one claim takes: a worker's share, not the whole queue
# the objects of a job to one destination usually die together: one delivery_dead notification for them
DEAD_NOTICE_QUIET = timedelta(minutes=10)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential back-off, base * 2**(attempt-1) capped at max_seconds, for at most max_age after queueing."""

    base_seconds: float
    max_seconds: float = 900.0
    max_age: timedelta = timedelta(hours=24)

    def delay(self, attempt: int) -> float:
        return float(min(self.max_seconds, self.base_seconds * (2 ** min(max(0, attempt - 1), 32))))


def _free(now: datetime) -> tuple[ColumnElement[bool], ...]:
    """A row that is due and that nobody holds (or whose holder let its lease run out)."""
    return (Delivery.status == DeliveryStatus.PENDING, Delivery.next_attempt_at <= now,
            or_(Delivery.lease_until.is_(None), Delivery.lease_until < now))


def claim_due(factory: sessionmaker[Session], owner: str, lease: timedelta,
              limit: int = CLAIM_BATCH) -> list[Delivery]:
    """Take the lease of up to ``limit`` due deliveries for ``owner``; the rows are this owner's alone."""
    now = utcnow()
    with factory.begin() as session:
        # a superseded job's pending deliveries are never sent (dicom_node.db.supersession)
        superseded = select(Job.id).where(Job.status == JobStatus.SUPERSEDED)
        candidates = (select(Delivery.id).where(*_free(now))
                      .where(or_(Delivery.job_id.is_(None), Delivery.job_id.not_in(superseded)))
                      .order_by(Delivery.id).limit(limit))
        claimed = session.scalars(
            update(Delivery).where(Delivery.id.in_(candidates), *_free(now))
            .values(lease_owner=owner, lease_until=now + lease)
            .returning(Delivery.id).execution_options(synchronize_session=False)).all()
        if not claimed:
            return []
        return list(session.scalars(select(Delivery).where(Delivery.id.in_(claimed)).order_by(Delivery.id)))


def release_dead_holders(factory: sessionmaker[Session], worker_id: str, alive: Callable[[int], bool]) -> int:
    """Free the leases that earlier processes of this worker id (``<worker id>/<pid>/<nonce>``, see
    ``delivery.lease_owner``) still hold although their process is gone: after a crash, the restarted
    worker sends those deliveries at once instead of waiting for the leases to run out."""
    prefix = f"{worker_id[:60]}/"
    now = utcnow()
    with factory.begin() as session:
        held = session.execute(select(Delivery.id, Delivery.lease_owner).where(
            Delivery.status == DeliveryStatus.PENDING, Delivery.lease_until.is_not(None),
            Delivery.lease_until >= now, Delivery.lease_owner.startswith(prefix, autoescape=True))).all()
        dead = [row_id for row_id, owner in held if not _holder_alive(owner, prefix, alive)]
        if not dead:
            return 0
        return updated_rows(session.execute(
            update(Delivery).where(Delivery.id.in_(dead), Delivery.lease_until >= now)
            .values(lease_owner="", lease_until=None).execution_options(synchronize_session=False)))


def _holder_alive(owner: str, prefix: str, alive: Callable[[int], bool]) -> bool:
    pid_text = owner[len(prefix):].split("/", 1)[0]
    return not pid_text.isdigit() or alive(int(pid_text))  # an owner of another shape is left to its lease


def renew_leases(factory: sessionmaker[Session], owner: str, delivery_ids: Sequence[int], lease: timedelta) -> int:
    """Keep holding rows still being sent (a large object over a slow link outlives one lease)."""
    if not delivery_ids:
        return 0
    with factory.begin() as session:
        return updated_rows(session.execute(
            update(Delivery).where(Delivery.id.in_(list(delivery_ids)), Delivery.lease_owner == owner,
                                   Delivery.status == DeliveryStatus.PENDING)
            .values(lease_until=utcnow() + lease).execution_options(synchronize_session=False)))


def record_failure(factory: sessionmaker[Session], delivery_id: int, owner: str, error: str,
                   policy: RetryPolicy) -> DeliveryStatus:
    """One failed try: back off, or DEAD once the row is ``policy.max_age`` old. The last try is at that age."""
    now = utcnow()
    with factory.begin() as session:
        row = session.get(Delivery, delivery_id, with_for_update=True)
        if row is None:
            return DeliveryStatus.DEAD
        if row.status != DeliveryStatus.PENDING or (owner and row.lease_owner != owner):
            return row.status  # sent or re-claimed meanwhile: the other outcome stands
        row.attempts += 1
        row.last_error = error[:2000]
        row.lease_owner, row.lease_until = "", None
        deadline = row.queued_at + policy.max_age
        if now >= deadline:
            row.status = DeliveryStatus.DEAD
            _tell_dead(session, row.job_id, row.destination, row.kind, row.attempts, row.last_error)
        else:
            row.next_attempt_at = min(now + timedelta(seconds=policy.delay(row.attempts)), deadline)
        return row.status


def mark_dead(factory: sessionmaker[Session], delivery_id: int, error: str, count_attempt: bool = True) -> None:
    """Straight to the dead letter: there is nowhere to send the row (its reason says why)."""
    with factory.begin() as session:
        dead = session.execute(
            update(Delivery).where(Delivery.id == delivery_id, Delivery.status == DeliveryStatus.PENDING)
            .values(status=DeliveryStatus.DEAD, last_error=error[:2000], lease_owner="", lease_until=None,
                    attempts=Delivery.attempts + (1 if count_attempt else 0))
            .returning(Delivery.job_id, Delivery.destination, Delivery.kind, Delivery.attempts)
            .execution_options(synchronize_session=False)).all()
        for job_id, destination, kind, attempts in dead:
            _tell_dead(session, job_id, destination, kind, attempts, error)


def _tell_dead(session: Session, job_id: int | None, destination: str, kind: str, attempts: int, error: str) -> None:
    """The delivery_dead notification of a job's delivery, in the transaction that makes it dead (a manual
    send's failure is told to whoever ran it)."""
    if job_id is not None:
        record_job_event(session, "delivery_dead", job_id, subject=f"job {job_id} to {destination}",
                         quiet=DEAD_NOTICE_QUIET, destination=destination, kind=kind, attempts=attempts,
                         error=error[:300])


def requeue_dead(session: Session, job_ids: Iterable[int] | None = None, manual: bool = False,
                 delivery_ids: Iterable[int] | None = None) -> list[Delivery]:
    """Dead deliveries queued again from now, with a fresh max age: those of ``job_ids``, or every one
    (None); ``manual`` adds the rows of manual sends; ``delivery_ids`` names the rows themselves
    (whatever their job). Returns the rows."""
    query = select(Delivery).where(Delivery.status == DeliveryStatus.DEAD)
    if delivery_ids is not None:
        query = query.where(Delivery.id.in_(sorted(set(delivery_ids))))
    elif job_ids is not None:
        ids = sorted(set(job_ids))
        query = query.where(or_(Delivery.job_id.in_(ids), Delivery.job_id.is_(None)) if manual
                            else Delivery.job_id.in_(ids))
    elif not manual:
        query = query.where(Delivery.job_id.is_not(None))
    now = utcnow()
    rows = list(session.scalars(query.order_by(Delivery.id)))
    for row in rows:
        row.status, row.next_attempt_at, row.queued_at = DeliveryStatus.PENDING, now, now
        row.lease_owner, row.lease_until = "", None
    return rows


def due_now(session: Session, delivery_ids: Iterable[int] | None = None, job_id: int | None = None) -> int:
    """Pending deliveries (the rows named, or a job's) tried at the next pass instead of after their
    back-off; a row a worker holds keeps its lease. Returns how many."""
    query = update(Delivery).where(Delivery.status == DeliveryStatus.PENDING)
    if delivery_ids is not None:
        query = query.where(Delivery.id.in_(sorted(set(delivery_ids))))
    if job_id is not None:
        query = query.where(Delivery.job_id == job_id)
    return updated_rows(session.execute(query.values(next_attempt_at=utcnow())
                                        .execution_options(synchronize_session=False)))


def record_manual(factory: sessionmaker[Session], destination: str, owner: str, lease: timedelta,
                  objects: Sequence[tuple[str, str, str, str]]) -> list[int]:
    """Rows for a manual send of (kind, SOP Instance UID, SOP Class UID, path), held by ``owner`` while it sends."""
    now = utcnow()
    rows = [Delivery(job_id=None, destination=destination, kind=kind[:16], sop_uid=sop_uid, sop_class_uid=sop_class,
                     path=path, next_attempt_at=now, queued_at=now, lease_owner=owner, lease_until=now + lease)
            for kind, sop_uid, sop_class, path in objects]
    with factory.begin() as session:
        session.add_all(rows)
        session.flush()
        return [row.id for row in rows]


def sent_by_hand(factory: sessionmaker[Session], delivery_id: int, transfer_syntax: str = "") -> list[int]:
    """A manual send succeeded: mark it sent, and every unsent job delivery of the same object to the
    same destination too. Returns the jobs of those, to be settled."""
    with factory.begin() as session:
        row = session.get(Delivery, delivery_id)
        if row is None:
            return []
        now = utcnow()
        row.status, row.sent_at, row.attempts, row.last_error = DeliveryStatus.SENT, now, row.attempts + 1, ""
        row.lease_owner, row.lease_until, row.transfer_syntax = "", None, transfer_syntax
        twins = list(session.scalars(select(Delivery).where(
            Delivery.destination == row.destination, Delivery.sop_uid == row.sop_uid, Delivery.id != row.id,
            Delivery.status != DeliveryStatus.SENT, Delivery.job_id.is_not(None))))
        for twin in twins:
            twin.status, twin.sent_at, twin.lease_owner, twin.lease_until = DeliveryStatus.SENT, now, "", None
            twin.last_error = f"sent by hand (dicom-node send, delivery {row.id})"
        job_ids = sorted({twin.job_id for twin in twins if twin.job_id is not None})
        reopen_jobs(session, job_ids)  # a job failed on this delivery settles again from its rows
        return job_ids


def reopen_jobs(session: Session, job_ids: Iterable[int]) -> int:
    """Jobs whose deliveries were queued again are delivering again (their failure is no longer the outcome)."""
    ids = sorted(set(job_ids))
    if not ids:
        return 0
    return updated_rows(session.execute(
        update(Job).where(Job.id.in_(ids), Job.status.in_([JobStatus.FAILED, JobStatus.DONE]))
        .values(status=JobStatus.DELIVERING, stage="delivering", error_class="", error_message="", finished_at=None)
        .execution_options(synchronize_session=False)))


def list_deliveries(session: Session, job_id: int | None = None, states: Sequence[DeliveryStatus] = (),
                    limit: int = 200) -> list[Delivery]:
    """The newest deliveries first, of one job or all, in the given states or any."""
    query = select(Delivery)
    if job_id is not None:
        query = query.where(Delivery.job_id == job_id)
    if states:
        query = query.where(Delivery.status.in_(list(states)))
    return list(session.scalars(query.order_by(Delivery.id.desc()).limit(limit)))
