"""The one place with the SQL of review before sending: hold a job, list the held ones, record a decision.

A job whose routed action requires review is held by the worker once its outputs are written
(:func:`hold`): status ``review``, ``review_since`` set, no delivery row. A decision changes the row
only while it is still in review, in one conditional UPDATE (:func:`approve`, :func:`reject`), so two
reviewers deciding at once, or a series that grew meanwhile (the job superseded), leave exactly one
outcome: the other gets False. Approving adds the delivery rows in the same commit; rejecting is
terminal and sends nothing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Row, Select, select, update
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db.index import updated_rows
from dicom_node.db.tables import Delivery, Job, JobStatus, Patient, Series, Study, utcnow

APPROVED = "approved"
REJECTED = "rejected"


@dataclass(frozen=True)
class HeldJob:
    """A job in review with what identifies its series (the patient's only for roles that may see it)."""

    job: Job
    series_uid: str
    series_description: str
    study_date: str
    patient_key: str
    accession_number: str


def hold(factory: sessionmaker[Session], job_id: int) -> bool:
    """Put a running job in review (its outputs written, nothing recorded to send); False when it was
    superseded while it ran."""
    with factory.begin() as session:
        return updated_rows(session.execute(
            update(Job).where(Job.id == job_id, Job.status == JobStatus.RUNNING)
            .values(status=JobStatus.REVIEW, stage="review", review_since=utcnow()))) == 1


def _held_query() -> Select[Job, str, str, str, str, str]:
    return (select(Job, Series.series_uid, Series.description, Study.study_date, Patient.patient_key,
                   Study.accession_number)
            .join(Series, Series.id == Job.series_id).join(Study, Study.id == Series.study_id)
            .join(Patient, Patient.id == Study.patient_id))


def _held(row: Row[Job, str, str, str, str, str]) -> HeldJob:
    job, series_uid, description, study_date, patient_key, accession = row
    return HeldJob(job, series_uid, description, study_date, patient_key, accession)


def in_review(session: Session, limit: int = 500) -> list[HeldJob]:
    """The jobs waiting for a decision, the longest waiting first."""
    rows = session.execute(_held_query().where(Job.status == JobStatus.REVIEW)
                           .order_by(Job.review_since, Job.id).limit(limit)).all()
    return [_held(row) for row in rows]


def held_job(session: Session, job_id: int) -> HeldJob | None:
    """A job that is or was held for review (whatever its state now); None for any other job."""
    row = session.execute(_held_query().where(Job.id == job_id, Job.review_since.is_not(None))).first()
    return None if row is None else _held(row)


def approve(session: Session, job_id: int, user: str, kept: Sequence[str] | None, rows: list[Delivery],
            at: datetime) -> bool:
    """Record the approval and the delivery rows, and mark the job delivering; False (nothing recorded)
    when the job is no longer in review. ``kept``: the structures kept, None for all."""
    changed = updated_rows(session.execute(
        update(Job).where(Job.id == job_id, Job.status == JobStatus.REVIEW)
        .values(status=JobStatus.DELIVERING, stage="delivering", reviewed_by=user[:64], reviewed_at=at,
                review_decision=APPROVED, review_kept="" if kept is None else json.dumps(list(kept)))
        .execution_options(synchronize_session=False)))
    if changed != 1:
        return False
    for row in rows:
        row.job_id = job_id
        session.add(row)
    return True


def reject(session: Session, job_id: int, user: str, reason: str, at: datetime) -> bool:
    """Record the rejection: the job is finished and sends nothing; False when it is no longer in review."""
    return updated_rows(session.execute(
        update(Job).where(Job.id == job_id, Job.status == JobStatus.REVIEW)
        .values(status=JobStatus.REJECTED, stage="rejected", finished_at=at, reviewed_by=user[:64], reviewed_at=at,
                review_decision=REJECTED, review_reason=reason)
        .execution_options(synchronize_session=False))) == 1


def kept_of(job: Job) -> list[str] | None:
    """The structures an approval kept (None: all, or not approved)."""
    return list(json.loads(job.review_kept)) if job.review_kept else None


def review_notes(job: Job) -> list[str]:
    """What ``dicom-node jobs`` says of a job's review: waiting since when, or who decided what."""
    if job.status == JobStatus.REVIEW and job.review_since is not None:
        return [f"in review since {job.review_since:%Y-%m-%d %H:%M:%S} UTC"]
    if job.review_decision == APPROVED:
        kept = kept_of(job)
        return [f"approved by {job.reviewed_by}" + ("" if kept is None else f" (kept {', '.join(kept)})")]
    if job.review_decision == REJECTED:
        return [f"rejected by {job.reviewed_by}: {job.review_reason}"]
    return []
