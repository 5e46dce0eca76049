"""The one place with the SQL of superseded jobs: a series that grew after it was dispatched.

When instances arrive for a series that already has jobs, the completion sweep
(``dicom_node.scheduler``) calls ``hold_undelivered`` at once, and ``link`` when the series is
complete again and its new job exists. A job that has delivered nothing yet (queued, running,
held for review, delivering with nothing sent, or finished without a delivery sent) becomes
SUPERSEDED: it sends nothing more. A rejected job keeps that state (the link is still recorded).
A job with a delivery sent keeps its state; the new job's outputs are then a new version that names
what it replaces (``revision_of``; written by ``dicom_node.outputs.revision``).
Both jobs record the link: the new one in ``supersedes``, the old one in ``superseded_by``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import Exists, exists, or_, select, update
from sqlalchemy.orm import Session

from dicom_node.db.tables import Delivery, DeliveryStatus, Job, JobStatus, utcnow

log = logging.getLogger(__name__)

_LIVE = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.REVIEW, JobStatus.DELIVERING)
# states a growing series leaves as they are: superseded already, or rejected by a reviewer (a decision on record)
_KEPT = (JobStatus.SUPERSEDED, JobStatus.REJECTED)


@dataclass(frozen=True)
class DeliveredObject:
    """An output object of a job that was sent to at least one destination."""

    kind: str
    sop_uid: str
    sop_class_uid: str
    path: str


def _has_sent() -> Exists:
    return exists().where(Delivery.job_id == Job.id, Delivery.status == DeliveryStatus.SENT)


def hold_undelivered(session: Session, series_id: int) -> list[int]:
    """Supersede every job of the series that has not delivered anything and is not superseded yet
    (also a running or delivering one: the worker records no deliveries for it, and the sender
    skips its pending ones). Returns their ids."""
    held = list(session.scalars(
        select(Job.id).where(Job.series_id == series_id, Job.status.not_in(_KEPT),
                             Job.superseded_by.is_(None), or_(Job.status.in_(_LIVE), ~_has_sent()))
        .order_by(Job.id)))
    if held:
        session.execute(update(Job).where(Job.id.in_(held))
                        .values(status=JobStatus.SUPERSEDED, stage="superseded", finished_at=utcnow()))
    return held


def link(session: Session, new_job: Job, series_id: int) -> tuple[int, bool] | None:
    """Link ``new_job`` to the latest earlier job of the same series and rule; (its id, whether it
    had delivered something), or None when there is none."""
    session.flush()
    previous = session.scalar(
        select(Job).where(Job.series_id == series_id, Job.rule_name == new_job.rule_name, Job.id != new_job.id,
                          Job.superseded_by.is_(None), Job.id < new_job.id).order_by(Job.id.desc()).limit(1))
    if previous is None:
        return None
    delivered = bool(session.scalar(select(_has_sent()).where(Job.id == previous.id)))
    if previous.status in _LIVE or (not delivered and previous.status not in _KEPT):
        previous.status = JobStatus.SUPERSEDED
        previous.stage = "superseded"
        previous.finished_at = utcnow()
    previous.superseded_by = new_job.id
    new_job.supersedes = previous.id
    return previous.id, delivered


def lineage_notes(job: Job) -> list[str]:
    """What ``dicom-node jobs`` says of a job's completion and supersession."""
    notes = ((job.completion_fallback, f"unconfirmed completion: {job.completion_reason}"),
             (job.supersedes is not None, f"supersedes job {job.supersedes}"),
             (job.superseded_by is not None, f"superseded by job {job.superseded_by}"))
    return [text for shown, text in notes if shown]


@dataclass(frozen=True)
class Replaced:
    """What a new version replaces: the nearest earlier job in the chain that delivered something."""

    job_id: int
    version: int  # of the new job's outputs: 2 for the first replacement
    objects: tuple[DeliveredObject, ...]


def revision_of(session: Session, job_id: int) -> Replaced | None:
    """None when no job this one supersedes (directly or through superseded ones) delivered anything."""
    chain: list[int] = []
    current = session.scalar(select(Job.supersedes).where(Job.id == job_id))
    while current is not None and current not in chain:
        chain.append(current)
        current = session.scalar(select(Job.supersedes).where(Job.id == current))
    delivered = [j for j in chain if session.scalar(select(_has_sent()).where(Job.id == j))]
    if not delivered:
        return None
    nearest = delivered[0]
    rows = session.execute(select(Delivery.kind, Delivery.sop_uid, Delivery.sop_class_uid, Delivery.path)
                           .where(Delivery.job_id == nearest, Delivery.status == DeliveryStatus.SENT)
                           .order_by(Delivery.id)).all()
    seen: dict[str, DeliveredObject] = {}
    for kind, sop_uid, sop_class_uid, path in rows:
        seen.setdefault(sop_uid, DeliveredObject(kind, sop_uid, sop_class_uid, path))
    return Replaced(nearest, len(delivered) + 1, tuple(seen.values()))
