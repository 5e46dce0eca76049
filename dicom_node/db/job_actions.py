"""What an operator does to a job or a delivery: retry a failed one, cancel one not yet running.

A retried job is queued again as it was (same routed action, attempts from zero) and its undelivered
deliveries are due again; a cancelled one is failed with the reason ``Cancelled``. A retried dead
delivery is queued again with a fresh max age and its job delivers again, as ``dicom-node retry``
does (the same functions of :mod:`dicom_node.db.deliveries` and :mod:`dicom_node.db.jobs`).
"""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session

from dicom_node.db import deliveries, jobs
from dicom_node.db.index import updated_rows
from dicom_node.db.tables import Delivery, DeliveryStatus, Job, JobStatus, utcnow
from dicom_node.errors import DicomNodeError

CANCELLED = "Cancelled"


class JobActionError(DicomNodeError):
    """The job is not in a state the action applies to."""


def retry(session: Session, job_id: int) -> str:
    """What ``dicom-node retry JOB`` does, for one job: its dead deliveries queued again with a fresh
    max age (the job delivering again), or a job that failed before it had outputs queued again with
    its attempts reset; a delivering job's pending deliveries are made due now. Returns what was done."""
    row = session.get(Job, job_id)
    if row is None:
        raise JobActionError(f"no job {job_id}")
    requeued = deliveries.requeue_dead(session, [job_id])
    if requeued:
        deliveries.reopen_jobs(session, [job_id])
        return f"{len(requeued)} deliveries due again"
    if jobs.requeue_failed(session, [job_id]):
        return "queued again"
    if row.status == JobStatus.DELIVERING:
        return f"{deliveries.due_now(session, job_id=job_id)} deliveries due now"
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
                    .values(status=DeliveryStatus.DEAD, last_error=f"cancelled by {actor}", lease_owner="",
                            lease_until=None))


def retry_delivery(session: Session, delivery_id: int) -> str:
    """One delivery: a dead one queued again (its job delivering again), a pending one due now."""
    row = session.get(Delivery, delivery_id)
    if row is None:
        raise JobActionError(f"no delivery {delivery_id}")
    if row.status == DeliveryStatus.DEAD:
        deliveries.requeue_dead(session, delivery_ids=[delivery_id])
        if row.job_id is not None:
            deliveries.reopen_jobs(session, [row.job_id])
        return "queued again"
    if row.status == DeliveryStatus.PENDING:
        deliveries.due_now(session, delivery_ids=[delivery_id])
        return "due now"
    raise JobActionError(f"delivery {delivery_id} was sent: nothing to retry")


def retry_dead_deliveries(session: Session) -> tuple[int, list[int]]:
    """Every dead delivery, of jobs and manual sends, queued again (``dicom-node retry --failed``
    without re-running failed pipelines). Returns how many, and the jobs delivering again."""
    rows = deliveries.requeue_dead(session, None, manual=True)
    job_ids = sorted({r.job_id for r in rows if r.job_id is not None})
    deliveries.reopen_jobs(session, job_ids)
    return len(rows), job_ids
