"""The job SQL: enqueue with de-dup key, atomic claim, heartbeat, requeue of lost jobs (each loss
an attempt), settling a job from its deliveries, and the delivery rows a job's outputs make.

Claiming is a conditional UPDATE (``... WHERE id = ? AND status = 'queued'``): whichever worker's
UPDATE changes the row owns the job, on SQLite and PostgreSQL alike. Sending deliveries (leases,
back-off, dead letter) is in :mod:`dicom_node.db.deliveries`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Protocol

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db.index import updated_rows
from dicom_node.db.notifications import record_job_event
from dicom_node.db.tables import (
    Delivery,
    DeliveryStatus,
    Job,
    JobStatus,
    Series,
    utcnow,
)
from dicom_node.routing import RoutedAction, RoutedDestination, RoutingError
from dicom_node.seg_variants import objects_for_variant

log = logging.getLogger(__name__)



def enqueue(session: Session, series_id: int, series_uid: str, action: RoutedAction,
            instance_count: int, rerun_of: int | None = None) -> Job | None:
    """Add a job running ``action`` unless the same (series, rule, model, instance count) was enqueued before.

    ``rerun_of``: an operator's re-run of that job (with another rule); its key names the job, so the
    same re-run is enqueued once however often it is asked for, and the sweep's own key stays free."""
    key = f"{series_uid}|{action.rule_name}|{action.model_id}|{instance_count}"
    if rerun_of is not None:
        key = f"{key}|rerun of {rerun_of}"[-200:]  # the column's length; the unique tail is kept
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


def _tell_failed(session: Session, job: Job) -> None:
    """The job_failed notification, in the transaction that records the failure (dicom_node.notify)."""
    record_job_event(session, "job_failed", job.id, error_class=job.error_class, error=job.error_message[:300],
                     attempts=job.attempts)


def _lost(session: Session, job: Job, max_attempts: int) -> bool:
    """A job whose worker died (or stopped beating) during it: queued again, or FAILED once it has
    been tried ``max_attempts`` times (a job that kills its worker must not loop forever). True if failed."""
    lost_in = f"last: worker {job.worker_id or '?'}, stage {job.stage!r}"
    if job.attempts >= max_attempts:
        job.status = JobStatus.FAILED
        job.error_class = "WorkerLost"
        job.error_message = f"worker died during the job {job.attempts} times ({lost_in})"
        job.finished_at = utcnow()
        job.stage = JobStatus.FAILED.value
        _tell_failed(session, job)
        return True
    job.status = JobStatus.QUEUED
    job.worker_id = ""
    return False


def requeue_stale(factory: sessionmaker[Session], stale_after: timedelta, max_attempts: int) -> int:
    """Jobs whose worker stopped beating go back to the queue (or fail after max attempts)."""
    cutoff = utcnow() - stale_after
    with factory.begin() as session:
        stale = session.scalars(select(Job).where(Job.status == JobStatus.RUNNING, Job.heartbeat_at < cutoff)).all()
        for job in stale:
            _lost(session, job, max_attempts)
    if stale:
        log.warning("requeued or failed %d stale job(s)", len(stale))
    return len(stale)


def release_own(factory: sessionmaker[Session], worker_id: str, max_attempts: int) -> tuple[int, int]:
    """A worker that starts again under the same id gives back what it held when it died: each such
    job was an attempt. Returns (queued again, failed)."""
    with factory.begin() as session:
        held = session.scalars(select(Job).where(Job.status == JobStatus.RUNNING, Job.worker_id == worker_id)).all()
        failed = sum(_lost(session, job, max_attempts) for job in held)
        return len(held) - failed, failed


def give_back(factory: sessionmaker[Session], job_id: int, worker_id: str, max_attempts: int, error: str) -> None:
    """The worker could not finish a job for a reason outside the job (the database went away):
    queued again (an attempt), or failed after max_attempts, with the reason recorded."""
    with factory.begin() as session:
        job = session.get(Job, job_id)
        if job is None or job.status != JobStatus.RUNNING or job.worker_id != worker_id:
            return
        if job.attempts >= max_attempts:
            job.status, job.error_class, job.finished_at = JobStatus.FAILED, "WorkerError", utcnow()
            job.stage = JobStatus.FAILED.value
            job.error_message = f"{error} (tried {job.attempts} times)"[:2000]
            _tell_failed(session, job)
        else:
            job.status, job.worker_id = JobStatus.QUEUED, ""
            job.error_message = f"{error}; queued again"[:2000]


def requeue_failed(session: Session, job_ids: Iterable[int] | None = None) -> list[int]:
    """Failed jobs that never recorded deliveries (their pipeline failed) are queued again with their
    attempts reset. Those with deliveries are re-opened by re-queueing the deliveries. Returns the ids."""
    query = select(Job).where(Job.status == JobStatus.FAILED, ~Job.deliveries.any())
    if job_ids is not None:
        query = query.where(Job.id.in_(sorted(set(job_ids))))
    jobs_ = list(session.scalars(query))
    for job in jobs_:
        job.status, job.attempts, job.worker_id, job.stage = JobStatus.QUEUED, 0, "", ""
        job.error_class, job.error_message, job.finished_at, job.started_at = "", "", None, None
    return [job.id for job in jobs_]


def finish(factory: sessionmaker[Session], job_id: int, status: JobStatus, timings: dict[str, float] | None = None,
           error: BaseException | None = None) -> None:
    values: dict[str, object] = {"status": status, "finished_at": utcnow(), "stage": status.value}
    if timings is not None:
        values["timings"] = json.dumps({k: round(v, 3) for k, v in timings.items()})
    if error is not None:
        values["error_class"] = type(error).__name__
        values["error_message"] = str(error)[:2000]
    with factory.begin() as session:  # a superseded job keeps that state
        result = session.execute(update(Job).where(Job.id == job_id, Job.status != JobStatus.SUPERSEDED)
                                 .values(**values).execution_options(synchronize_session=False))
        job = session.get(Job, job_id) if status == JobStatus.FAILED and updated_rows(result) == 1 else None
        if job is not None:
            _tell_failed(session, job)


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


class OutputObject(Protocol):
    """A written output object as the delivery rows name it (``pipeline.WrittenObject``)."""

    @property
    def kind(self) -> str: ...

    @property
    def seg_type(self) -> str: ...

    @property
    def sop_uid(self) -> str: ...

    @property
    def sop_class_uid(self) -> str: ...

    @property
    def path(self) -> object: ...


def delivery_rows(destinations: Sequence[RoutedDestination], objects: Sequence[OutputObject]) -> list[Delivery]:
    """One row per object x destination, each destination getting its SEG variant's objects
    (``seg_variants.objects_for_variant``): what a job records to send, in the worker or on approval."""
    return [Delivery(destination=dest.name, kind=obj.kind, sop_uid=obj.sop_uid, sop_class_uid=obj.sop_class_uid,
                     path=str(obj.path))
            for dest in destinations for obj in objects_for_variant(list(objects), dest.seg_type)]


def deliveries_of(session: Session, job_id: int) -> list[Delivery]:
    return list(session.scalars(select(Delivery).where(Delivery.job_id == job_id).order_by(Delivery.id)))


def mark_sent(factory: sessionmaker[Session], delivery_id: int, transfer_syntax: str = "") -> None:
    with factory.begin() as session:
        session.execute(update(Delivery).where(Delivery.id == delivery_id)
                        .values(status=DeliveryStatus.SENT, sent_at=utcnow(), attempts=Delivery.attempts + 1,
                                last_error="", lease_owner="", lease_until=None, transfer_syntax=transfer_syntax))


def settle_job(factory: sessionmaker[Session], job_id: int) -> JobStatus | None:
    """After deliveries change: DONE when all sent, FAILED when any is dead and none pending, else unchanged."""
    with factory.begin() as session:
        job = session.get(Job, job_id)
        if job is None or job.status != JobStatus.DELIVERING:
            return None
        statuses = {d.status for d in deliveries_of(session, job_id)}
        if statuses <= {DeliveryStatus.SENT}:
            job.status = JobStatus.DONE
        elif DeliveryStatus.DEAD in statuses and DeliveryStatus.PENDING not in statuses:
            job.status = JobStatus.FAILED
            job.error_class = "DeliveryDead"
            job.error_message = "; ".join(f"{d.kind} to {d.destination}: dead after {d.attempts} attempt(s): "
                                          f"{d.last_error}"
                                          for d in job.deliveries if d.status == DeliveryStatus.DEAD)[:2000]
        else:
            return job.status
        job.finished_at = utcnow()
        job.stage = job.status.value
        return job.status


def list_jobs(session: Session, limit: int = 50) -> list[tuple[Job, str]]:
    rows = session.execute(select(Job, Series.series_uid).join(Series, Series.id == Job.series_id)
                           .order_by(Job.id.desc()).limit(limit)).all()
    return [(r[0], r[1]) for r in rows]
