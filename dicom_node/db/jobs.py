"""The one place with job and delivery SQL: enqueue with de-dup key, atomic claim, heartbeat,
retry, dead-letter, and per-object delivery records.

Claiming is a conditional UPDATE (``... WHERE id = ? AND status = 'queued'``): whichever worker's
UPDATE changes the row owns the job, on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db.index import updated_rows
from dicom_node.db.tables import (
    Delivery,
    DeliveryStatus,
    Job,
    JobStatus,
    Series,
    utcnow,
)
from dicom_node.routing import RoutedAction, RoutingError

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class RetryPolicy:
    """Exponential back-off: base * 2**(attempt-1), capped."""

    base_seconds: float
    max_seconds: float = 900.0

    def delay(self, attempt: int) -> float:
        return float(min(self.max_seconds, self.base_seconds * (2 ** max(0, attempt - 1))))


def enqueue(session: Session, series_id: int, series_uid: str, action: RoutedAction,
            instance_count: int) -> Job | None:
    """Add a job running ``action`` unless the same (series, rule, model, instance count) was enqueued before."""
    key = f"{series_uid}|{action.rule_name}|{action.model_id}|{instance_count}"
    if session.scalar(select(Job.id).where(Job.dedup_key == key)) is not None:
        return None
    job = Job(dedup_key=key, series_id=series_id, rule_name=action.rule_name, model_id=action.model_id,
              model_version=action.model_version, instance_count=instance_count, action=action.to_json())
    try:
        with session.begin_nested():
            session.add(job)
    except IntegrityError:
        return None
    return job


# a job row of a version without snapshots: its rule may have changed since, so it is not guessed
NO_SNAPSHOT = "enqueued before routing snapshots; re-send the series"


def parse_action(job_id: int, stored: str) -> RoutedAction:
    """The action a job stored at enqueue, or RoutingError saying why there is none to run."""
    if not stored:
        raise RoutingError(f"job {job_id} was {NO_SNAPSHOT}")
    try:
        return RoutedAction.from_json(stored)
    except RoutingError as exc:
        raise RoutingError(f"job {job_id}: {exc}") from exc


def stored_actions(session: Session, job_ids: Iterable[int]) -> dict[int, str]:
    """Job id -> its stored action JSON (empty for rows enqueued before snapshots)."""
    ids = sorted(set(job_ids))
    if not ids:
        return {}
    return {job_id: action for job_id, action in session.execute(select(Job.id, Job.action).where(Job.id.in_(ids)))}


def claim(factory: sessionmaker[Session], worker_id: str) -> int | None:
    """Atomically take the oldest queued job (or an unfinished delivery job); returns its id."""
    with factory.begin() as session:
        candidates = session.scalars(
            select(Job.id).where(Job.status == JobStatus.QUEUED).order_by(Job.id).limit(5)
        ).all()
        for job_id in candidates:
            now = utcnow()
            result = session.execute(
                update(Job).where(Job.id == job_id, Job.status == JobStatus.QUEUED)
                .values(status=JobStatus.RUNNING, worker_id=worker_id, heartbeat_at=now,
                        started_at=now, attempts=Job.attempts + 1, stage="claimed")
            )
            if updated_rows(result) == 1:
                return job_id
    return None


def heartbeat(factory: sessionmaker[Session], job_id: int, worker_id: str, stage: str) -> None:
    with factory.begin() as session:
        session.execute(update(Job).where(Job.id == job_id, Job.worker_id == worker_id)
                        .values(heartbeat_at=utcnow(), stage=stage))


def requeue_stale(factory: sessionmaker[Session], stale_after: timedelta, max_attempts: int) -> int:
    """Jobs whose worker stopped beating go back to the queue (or fail after max attempts)."""
    cutoff = utcnow() - stale_after
    count = 0
    with factory.begin() as session:
        stale = session.scalars(select(Job).where(Job.status == JobStatus.RUNNING, Job.heartbeat_at < cutoff)).all()
        for job in stale:
            if job.attempts >= max_attempts:
                job.status = JobStatus.FAILED
                job.error_class = "WorkerLost"
                job.error_message = f"worker {job.worker_id} stopped during stage {job.stage!r} {job.attempts} times"
                job.finished_at = utcnow()
            else:
                job.status = JobStatus.QUEUED
                job.worker_id = ""
            count += 1
    if count:
        log.warning("requeued or failed %d stale job(s)", count)
    return count


def release_own(factory: sessionmaker[Session], worker_id: str) -> int:
    """A worker that starts again under the same id gives back what it held before it stopped."""
    with factory.begin() as session:
        result = session.execute(update(Job).where(Job.status == JobStatus.RUNNING, Job.worker_id == worker_id)
                                 .values(status=JobStatus.QUEUED, worker_id=""))
        return updated_rows(result)


def finish(factory: sessionmaker[Session], job_id: int, status: JobStatus, timings: dict[str, float] | None = None,
           error: BaseException | None = None) -> None:
    values: dict[str, object] = {"status": status, "finished_at": utcnow(), "stage": status.value}
    if timings is not None:
        values["timings"] = json.dumps({k: round(v, 3) for k, v in timings.items()})
    if error is not None:
        values["error_class"] = type(error).__name__
        values["error_message"] = str(error)[:2000]
    with factory.begin() as session:  # a superseded job keeps that state
        session.execute(update(Job).where(Job.id == job_id, Job.status != JobStatus.SUPERSEDED).values(**values))


def finish_timings(factory: sessionmaker[Session], job_id: int, timings: dict[str, float]) -> None:
    with factory.begin() as session:
        session.execute(update(Job).where(Job.id == job_id)
                        .values(timings=json.dumps({k: round(v, 3) for k, v in timings.items()})))


def set_model(factory: sessionmaker[Session], job_id: int, version: str, device: str) -> None:
    with factory.begin() as session:
        session.execute(update(Job).where(Job.id == job_id).values(model_version=version, device=device))


def add_deliveries(factory: sessionmaker[Session], job_id: int, rows: list[Delivery]) -> bool:
    """Record every output x destination in one commit, and mark the job as delivering. False (and
    nothing recorded) when the job was superseded meanwhile (dicom_node.db.supersession)."""
    with factory.begin() as session:
        result = session.execute(update(Job).where(Job.id == job_id, Job.status != JobStatus.SUPERSEDED)
                                 .values(status=JobStatus.DELIVERING, stage="delivering"))
        if updated_rows(result) != 1:
            return False
        for row in rows:
            row.job_id = job_id
            session.add(row)
        return True


def deliveries_of(session: Session, job_id: int) -> list[Delivery]:
    return list(session.scalars(select(Delivery).where(Delivery.job_id == job_id).order_by(Delivery.id)))


def due_deliveries(session: Session, now: datetime | None = None) -> list[Delivery]:
    now = now or utcnow()
    # a superseded job's pending deliveries are never sent (dicom_node.db.supersession)
    return list(session.scalars(select(Delivery).join(Job, Job.id == Delivery.job_id)
                                .where(Delivery.status == DeliveryStatus.PENDING, Delivery.next_attempt_at <= now,
                                       Job.status != JobStatus.SUPERSEDED).order_by(Delivery.id)))


def mark_sent(factory: sessionmaker[Session], delivery_id: int) -> None:
    with factory.begin() as session:
        session.execute(update(Delivery).where(Delivery.id == delivery_id)
                        .values(status=DeliveryStatus.SENT, sent_at=utcnow(), attempts=Delivery.attempts + 1,
                                last_error=""))


def mark_attempt_failed(factory: sessionmaker[Session], delivery_id: int, error: str, max_attempts: int,
                        policy: RetryPolicy) -> DeliveryStatus:
    with factory.begin() as session:
        row = session.get(Delivery, delivery_id)
        if row is None:
            return DeliveryStatus.FAILED
        row.attempts += 1
        row.last_error = error[:2000]
        if row.attempts >= max_attempts:
            row.status = DeliveryStatus.FAILED
        else:
            row.next_attempt_at = utcnow() + timedelta(seconds=policy.delay(row.attempts))
        return row.status


def settle_job(factory: sessionmaker[Session], job_id: int) -> JobStatus | None:
    """After deliveries change: DONE when all sent, FAILED when any gave up, else unchanged."""
    with factory.begin() as session:
        job = session.get(Job, job_id)
        if job is None or job.status != JobStatus.DELIVERING:
            return None
        statuses = {d.status for d in deliveries_of(session, job_id)}
        if statuses <= {DeliveryStatus.SENT}:
            job.status = JobStatus.DONE
        elif DeliveryStatus.FAILED in statuses and DeliveryStatus.PENDING not in statuses:
            job.status = JobStatus.FAILED
            job.error_class = "DeliveryFailed"
            job.error_message = "; ".join(f"{d.kind} to {d.destination}: {d.last_error}"
                                          for d in job.deliveries if d.status == DeliveryStatus.FAILED)[:2000]
        else:
            return job.status
        job.finished_at = utcnow()
        job.stage = job.status.value
        return job.status


def list_jobs(session: Session, limit: int = 50) -> list[tuple[Job, str]]:
    rows = session.execute(select(Job, Series.series_uid).join(Series, Series.id == Job.series_id)
                           .order_by(Job.id.desc()).limit(limit)).all()
    return [(r[0], r[1]) for r in rows]
