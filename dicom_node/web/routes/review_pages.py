"""The review pages: the queue of jobs waiting for a decision (``/review``) and a job's viewer
(``/review/{job_id}``): its CT in three views with the structures drawn, the structure list with
volumes, and for the roles that decide, Approve (the ticked structures) and Reject (with a reason).

The pages only show; the decisions are the JSON API's (``/api/review/{job_id}/approve|reject``),
which the page's script calls with the session's CSRF token. Patient identifiers are masked for
roles that may not see them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from fastapi import APIRouter, HTTPException, Path, Request

from dicom_node.db import overview
from dicom_node.db import review as review_db
from dicom_node.db.tables import Job, JobStatus, utcnow
from dicom_node.web.auth import OPERATOR_ROLES, Principal, Reader
from dicom_node.web.phi import masked
from dicom_node.web.schemas import JobOut
from dicom_node.web.state import node_state, render

router = APIRouter()
MAX_ID = 2**31 - 1


@dataclass(frozen=True)
class QueueRow:
    job_id: int
    patient: str
    description: str
    study_date: str
    rule_name: str
    model: str
    waited: str


def waited_text(since: datetime | None, now: datetime) -> str:
    """How long a job has waited, as people say it: 45 s, 12 min, 3 h 05 min, 2 d 4 h."""
    if since is None:
        return "-"
    seconds = max(0, int((now - since) / timedelta(seconds=1)))
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def queue_rows(request: Request, who: Principal) -> list[QueueRow]:
    now = utcnow()
    with node_state(request).factory() as session:
        held = review_db.in_review(session)
    return [QueueRow(h.job.id, masked(h.patient_key, who.role), h.series_description, h.study_date,
                     h.job.rule_name, f"{h.job.model_id} {h.job.model_version}".strip(),
                     waited_text(h.job.review_since, now)) for h in held]


def _decision(job: Job) -> str:
    if not job.review_decision:
        return ""
    when = job.reviewed_at.strftime("%Y-%m-%d %H:%M") if job.reviewed_at else ""
    text = f"{job.review_decision} by {job.reviewed_by} {when}".strip()
    kept = review_db.kept_of(job)
    if kept is not None:
        text += f" (kept: {', '.join(kept)})"
    if job.review_reason:
        text += f": {job.review_reason}"
    return text


@router.get("/review", include_in_schema=False)
def queue_page(request: Request, who: Reader) -> Any:
    return render(request, "review_queue.html", {"rows": queue_rows(request, who)})


@router.get("/review/{job_id}", include_in_schema=False)
def viewer_page(request: Request, who: Reader, job_id: int = Path(ge=1, le=MAX_ID)) -> Any:
    with node_state(request).factory() as session:
        row = overview.job(session, job_id)
        if row is None:
            raise HTTPException(status_code=404, detail=f"no job {job_id}")
        held = review_db.held_job(session, job_id)
        series = overview.series_row(session, row.series_id)
        job = JobOut.of(row, overview.timings_of(row))
        in_review = row.status == JobStatus.REVIEW
        waited = waited_text(row.review_since, utcnow()) if in_review else ""
        decision = _decision(row)
    patient = held.patient_key if held is not None else (series.patient_id if series is not None else "")
    return render(request, "review.html", {
        "j": job, "patient": masked(patient, who.role), "waited": waited, "decision": decision,
        "description": series.description if series is not None else "",
        "study_date": series.study_date if series is not None else "",
        "can_decide": in_review and who.role in OPERATOR_ROLES})
