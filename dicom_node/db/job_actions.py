"""The only SQL for what an operator does to a job: retry a failed one, cancel one not yet running.

A retried job is queued again as it was (same routed action, attempts from zero) and its undelivered
deliveries are due again; a cancelled one is failed with the reason ``Cancelled``.
"""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session

from dicom_node.db.index import updated_rows
from dicom_node.db.tables import Delivery, DeliveryStatus, Job, JobStatus, utcnow
from dicom_node.errors import DicomNodeError

CANCELLED = "Cancelled"


class JobActionError(DicomNodeError):
    """The job is not in a state the action applies to."""


def retry(session: Session, job_id: int) -> str:
    """Queue a failed job again, or make a delivering job's failed deliveries due now. Returns what was done."""
    row = session.get(Job, job_id)
    if row is None:
        raise JobActionError(f"no job {job_id}")
    now = utcnow()
    has_outputs = bool(row.deliveries)
    if row.status == JobStatus.FAILED and not has_outputs:
        session.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.FAILED)
                        .values(status=JobStatus.QUEUED, attempts=0, error_class="", error_message="",
                                worker_id="", heartbeat_at=None, started_at=None, finished_at=None, stage=""))
        return "queued again"
    if row.status in (JobStatus.FAILED, JobStatus.DELIVERING) and has_outputs:
        again = updated_rows(session.execute(
            update(Delivery).where(Delivery.job_id == job_id, Delivery.status != DeliveryStatus.SENT)
            .values(status=DeliveryStatus.PENDING, attempts=0, next_attempt_at=now)))
        session.execute(update(Job).where(Job.id == job_id)
                        .values(status=JobStatus.DELIVERING, error_class="", error_message="", finished_at=None))
        return f"{again} deliveries due again"
    raise JobActionError(f"job {job_id} is {row.status.value}: only failed or delivering jobs are retried")


def cancel(session: Session, job_id: int, actor: str) -> None:
    """Fail a queued job (a running one is the worker's until it ends) and its pending deliveries."""
    changed = updated_rows(session.execute(
        update(Job).where(Job.id == job_id, Job.status.in_([JobStatus.QUEUED, JobStatus.DELIVERING]))
        .values(status=JobStatus.FAILED, error_class=CANCELLED, error_message=f"cancelled by {actor}",
                finished_at=utcnow())))
    if changed != 1:
        row = session.get(Job, job_id)
        raise JobActionError(f"no job {job_id}" if row is None else
                             f"job {job_id} is {row.status.value}: only queued or delivering jobs are cancelled")
    session.execute(update(Delivery).where(Delivery.job_id == job_id, Delivery.status == DeliveryStatus.PENDING)
                    .values(status=DeliveryStatus.FAILED, last_error=f"cancelled by {actor}"))
