"""A reviewer's decision on a held job: approve all, approve a subset (objects rebuilt), or reject with a reason.

Approving writes the objects to send (:mod:`dicom_node.review.rebuild`), makes their delivery rows
exactly as the worker makes them (``db.jobs.delivery_rows``: each destination its SEG variant) and
records them with the decision in one commit; the worker's delivery thread sends them. Rejecting
finishes the job: nothing is sent. Every decision is written to the audit log in the same commit as
the job's new state, with who decided and when; the job row records it too (``reviewed_by``,
``reviewed_at``, ``review_decision``, ``review_reason``, ``review_kept``).

A job that is not in review (decided already, superseded because its series grew, never held) gets
:class:`~dicom_node.errors.NotInReview`; a name that is not one of the job's structures, or an empty
reason, a :class:`~dicom_node.errors.ReviewError`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db import audit, jobs, review, supersession
from dicom_node.db.index import series_instance_paths
from dicom_node.db.tables import Job, JobStatus, utcnow
from dicom_node.errors import NotInReview, ReviewError, UnknownJob
from dicom_node.housekeeping import job_output_dir
from dicom_node.outputs.revision import revision_from
from dicom_node.outputs.rtstruct.approval import Approval
from dicom_node.review.held import read_held
from dicom_node.review.rebuild import JobFiles, approve_as_written, approve_subset, discard, new_folder
from dicom_node.routing import RoutingError
from dicom_node.settings import Settings

log = logging.getLogger(__name__)

REASON_MAX = 2000


@dataclass(frozen=True)
class Decision:
    job_id: int
    decision: str  # approved | rejected
    status: str  # the job's state after it: delivering, done (nothing to send), rejected
    kept: list[str] | None  # the structures sent; None: all
    deliveries: int  # rows recorded to send
    message: str


def _job_in_review(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise UnknownJob(f"no job {job_id}")
    if job.status != JobStatus.REVIEW:
        raise NotInReview(f"job {job_id} is {job.status.value}: only a job in review can be decided")
    return job


def _job_files(settings: Settings, session: Session, job: Job) -> JobFiles:
    try:
        action = jobs.parse_action(job.id, job.action)
    except RoutingError as exc:
        raise ReviewError(str(exc)) from exc
    replaced = supersession.revision_of(session, job.id)
    revision = None if replaced is None else revision_from(replaced.version, replaced.objects)
    paths = tuple(p for p in (Path(s) for s in series_instance_paths(session, job.series_id)) if p.exists())
    return JobFiles(job.id, job_output_dir(settings.worker.output_dir, job.id), action, paths, revision)


def approve(settings: Settings, factory: sessionmaker[Session], job_id: int, user: str,
            keep: Sequence[str] | None = None) -> Decision:
    """Approve job ``job_id`` as ``user``: all its structures (``keep`` None, or every one of them), or
    only those named in ``keep`` (catalogue names, as the queue lists them)."""
    with factory() as session:
        files = _job_files(settings, session, _job_in_review(session, job_id))
    held = read_held(files.out_dir)
    names = [s.name for s in held.structures]
    if keep is not None:
        unknown = sorted(set(keep) - set(names))
        if unknown:
            raise ReviewError(f"not structures of job {job_id}: {', '.join(unknown)} (it has {', '.join(names)})")
        if not keep:
            raise ReviewError("keep at least one structure, or reject the job")
    kept = None if keep is None or set(keep) == set(names) else [n for n in names if n in set(keep)]
    at = utcnow()
    approval = Approval(user, at)
    folder = new_folder(files.out_dir)
    try:
        if kept is None:
            objects = approve_as_written(held.objects, approval, folder)
        else:
            objects = approve_subset(files, {o.kind for o in held.objects}, kept, settings.identity, approval,
                                     folder)
        rows = jobs.delivery_rows(files.action.destinations, objects)
        with factory.begin() as session:
            if not review.approve(session, job_id, user, kept, rows, at):
                raise NotInReview(f"job {job_id} was decided or superseded meanwhile")
            audit.record(session, user, "review-approve", f"job {job_id}", {
                "rule": files.action.rule_name, "kept": kept if kept is not None else "all",
                "dropped": sorted(set(names) - set(kept)) if kept is not None else [],
                "objects": [f"{o.kind} {o.sop_uid}" for o in objects], "deliveries": len(rows)})
    except BaseException:
        discard(folder)
        raise
    status = JobStatus.DELIVERING
    if not rows:  # no destination: nothing to send, the job is done
        status = jobs.settle_job(factory, job_id) or status
    log.info("job %d approved by a reviewer: %s, %d delivery(ies)", job_id,
             "all structures" if kept is None else f"{len(kept)} of {len(names)} structures", len(rows))
    return Decision(job_id, review.APPROVED, status.value, kept, len(rows),
                    f"approved{'' if kept is None else ' ' + ', '.join(kept)}: {len(rows)} object(s) to send")


def reject(factory: sessionmaker[Session], job_id: int, user: str, reason: str) -> Decision:
    """Reject job ``job_id`` as ``user`` for ``reason`` (required): it sends nothing, ever."""
    reason = reason.strip()
    if not reason:
        raise ReviewError("give the reason for rejecting")
    if len(reason) > REASON_MAX:
        raise ReviewError(f"the reason is {len(reason)} characters; at most {REASON_MAX}")
    with factory.begin() as session:
        job = _job_in_review(session, job_id)
        rule = job.rule_name
        if not review.reject(session, job_id, user, reason, utcnow()):
            raise NotInReview(f"job {job_id} was decided or superseded meanwhile")
        audit.record(session, user, "review-reject", f"job {job_id}", {"rule": rule, "reason": reason})
    log.info("job %d rejected by a reviewer: nothing is sent", job_id)
    return Decision(job_id, review.REJECTED, JobStatus.REJECTED.value, None, 0, "rejected: nothing is sent")
