"""The one place with housekeeping SQL: which series and job outputs are fully delivered, and marking them purged.

A series is removable when it is no longer receiving (DISPATCHED or IGNORED), every one of its jobs
is DONE and every delivery of those jobs is SENT. Any other job or delivery status (queued, running,
delivering, failed, pending, and any status added later) keeps it. A job's output folder is removable
when the job is DONE and every one of its deliveries is SENT. A SUPERSEDED job whose replacement
exists counts as finished, and its deliveries, which are never sent, do not count; so does a job a
reviewer REJECTED (it has none). A job held for REVIEW is not finished: its series and its outputs stay.

Purging a series deletes its instance rows and marks the series row PURGED with ``purged_at``;
patient, study, series, job and delivery rows stay (the audit trail of what was received, what ran
and what was sent). Each purge re-checks its conditions in the UPDATE itself, so an instance or a
job that arrives between the plan and the purge keeps the series.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, and_, delete, exists, func, or_, select, update
from sqlalchemy.orm import Session

from dicom_node.db.tables import Delivery, DeliveryStatus, Instance, Job, JobStatus, Series, SeriesState, utcnow

REMOVABLE_STATES = (SeriesState.DISPATCHED, SeriesState.IGNORED)
_DELETE_CHUNK = 500  # instance ids per DELETE: below every backend's limit of bound parameters


@dataclass(frozen=True)
class SeriesCandidate:
    """A fully delivered series whose instances may be removed."""

    series_id: int
    instance_count: int  # the series row's count, re-checked when purging
    files: int  # instance rows (one file each)
    size_bytes: int
    last_received_at: datetime


@dataclass(frozen=True)
class OutputCandidate:
    """A job whose every delivery was sent; its output folder may be removed."""

    job_id: int
    series_id: int
    finished_at: datetime


def _finished_job() -> ColumnElement[bool]:
    # a superseded job sends nothing more once the job that replaces it exists (dicom_node.db.supersession)
    replaced = and_(Job.status == JobStatus.SUPERSEDED, Job.superseded_by.is_not(None))
    return or_(Job.status.in_([JobStatus.DONE, JobStatus.REJECTED]), replaced)


def _series_fully_delivered() -> ColumnElement[bool]:
    unfinished_job = exists().where(Job.series_id == Series.id, ~_finished_job())
    unsent_delivery = (exists().where(Job.series_id == Series.id, Delivery.job_id == Job.id,
                                      Delivery.status != DeliveryStatus.SENT, Job.status != JobStatus.SUPERSEDED))
    return and_(Series.state.in_(REMOVABLE_STATES), Series.purged_at.is_(None), ~unfinished_job, ~unsent_delivery)


def removable_series(session: Session, received_before: datetime | None = None) -> list[SeriesCandidate]:
    """Fully delivered series holding instances, oldest last instance first; ``received_before`` bounds the age."""
    query = (select(Series.id, Series.instance_count, Series.last_received_at, func.count(Instance.id),
                    func.coalesce(func.sum(Instance.size_bytes), 0))
             .join(Instance, Instance.series_id == Series.id)
             .where(_series_fully_delivered())
             .group_by(Series.id, Series.instance_count, Series.last_received_at)
             .order_by(Series.last_received_at, Series.id))
    if received_before is not None:
        query = query.where(Series.last_received_at < received_before)
    return [SeriesCandidate(series_id=row[0], instance_count=row[1], last_received_at=row[2], files=int(row[3]),
                            size_bytes=int(row[4]))
            for row in session.execute(query)]


def purge_series(session: Session, candidate: SeriesCandidate, now: datetime | None = None) -> list[str] | None:
    """Mark the series PURGED and delete its instance rows; returns their file paths, or None when the series
    changed since it was planned (new instances, a new job, a delivery not sent) and is kept."""
    marked = cast(CursorResult[Any], session.execute(
        update(Series)
        .where(Series.id == candidate.series_id, Series.instance_count == candidate.instance_count,
               _series_fully_delivered())
        .values(state=SeriesState.PURGED, purged_at=now or utcnow(), instance_count=0, dispatched_count=0)
        .execution_options(synchronize_session=False)))
    if (marked.rowcount or 0) != 1:
        return None
    rows = session.execute(select(Instance.id, Instance.path).where(Instance.series_id == candidate.series_id)
                           .order_by(Instance.id)).all()
    ids = [row[0] for row in rows]
    for start in range(0, len(ids), _DELETE_CHUNK):
        session.execute(delete(Instance).where(Instance.id.in_(ids[start:start + _DELETE_CHUNK]))
                        .execution_options(synchronize_session=False))
    return [row[1] for row in rows]


def _job_fully_delivered() -> ColumnElement[bool]:
    unsent_delivery = exists().where(Delivery.job_id == Job.id, Delivery.status != DeliveryStatus.SENT,
                                     Job.status != JobStatus.SUPERSEDED)
    return and_(_finished_job(), Job.outputs_purged_at.is_(None), ~unsent_delivery)


def removable_outputs(session: Session, finished_before: datetime | None = None) -> list[OutputCandidate]:
    """Jobs whose outputs are all delivered and still on disk as far as the index knows, oldest first."""
    finished = func.coalesce(Job.finished_at, Job.created_at)
    query = (select(Job.id, Job.series_id, finished).where(_job_fully_delivered()).order_by(finished, Job.id))
    if finished_before is not None:
        query = query.where(finished < finished_before)
    return [OutputCandidate(job_id=row[0], series_id=row[1], finished_at=row[2]) for row in session.execute(query)]


def mark_outputs_purged(session: Session, job_id: int, now: datetime | None = None) -> bool:
    """Record that the job's output folder is removed; False when the job is no longer fully delivered."""
    result = cast(CursorResult[Any], session.execute(update(Job).where(Job.id == job_id, _job_fully_delivered())
                                                     .values(outputs_purged_at=now or utcnow())
                                                     .execution_options(synchronize_session=False)))
    return (result.rowcount or 0) == 1


def waiting_series(session: Session) -> int:
    """Series still holding instances that are not removable (receiving, or some job or delivery unfinished)."""
    held = exists().where(Instance.series_id == Series.id)
    return int(session.scalar(select(func.count(Series.id)).where(held, ~_series_fully_delivered())) or 0)
