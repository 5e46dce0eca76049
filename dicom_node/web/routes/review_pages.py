"""The review pages: the queue of jobs waiting for a decision (``/review``) and a held job's viewer
(``/review/{job_id}``): its CT in three views with the structures drawn, the structure list with
volumes, and for the roles that decide, Approve (the ticked structures) and Reject (with a reason).

The pages only show (from :mod:`dicom_node.review.queue`); the decisions are the JSON API's
(``/api/review/{job_id}/approve|reject``), which the page's script calls with the session's CSRF
token. Patient identifiers are masked for roles that may not see them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, HTTPException, Path, Request

from dicom_node.db.tables import JobStatus
from dicom_node.review.queue import QueueEntry, review_entry, review_queue
from dicom_node.web.auth import OPERATOR_ROLES, Principal, Reader
from dicom_node.web.phi import masked
from dicom_node.web.state import node_state, render

router = APIRouter()
MAX_ID = 2**31 - 1


@dataclass(frozen=True)
class ReviewRow:
    """A queue entry as the pages show it: patient masked for the role, times in words."""

    entry: QueueEntry
    patient: str
    waited: str
    decision: str

    @property
    def model(self) -> str:
        return f"{self.entry.model_id} {self.entry.model_version}".strip()


def waited_text(seconds: int) -> str:
    """How long a job has waited, as people say it: 45 s, 12 min, 3 h 05 min, 2 d 4 h."""
    seconds = max(0, seconds)
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


def _decision(entry: QueueEntry) -> str:
    if not entry.decision:
        return ""
    when = entry.reviewed_at.strftime("%Y-%m-%d %H:%M") if entry.reviewed_at else ""
    text = f"{entry.decision} by {entry.reviewed_by} {when}".strip()
    if entry.kept is not None:
        text += f" (kept: {', '.join(entry.kept)})"
    return text + (f": {entry.reason}" if entry.reason else "")


def _row(entry: QueueEntry, who: Principal) -> ReviewRow:
    return ReviewRow(entry, masked(entry.patient_id, who.role), waited_text(entry.waited_seconds), _decision(entry))


def _hex(colour: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*colour)


@router.get("/review", include_in_schema=False)
def queue_page(request: Request, who: Reader) -> Any:
    state = node_state(request)
    return render(request, "review_queue.html",
                  {"rows": [_row(e, who) for e in review_queue(state.settings, state.factory)]})


@router.get("/review/{job_id}", include_in_schema=False)
def viewer_page(request: Request, who: Reader, job_id: int = Path(ge=1, le=MAX_ID)) -> Any:
    state = node_state(request)
    entry = review_entry(state.settings, state.factory, job_id)
    if entry is None:
        raise HTTPException(status_code=404, detail=f"job {job_id} was never held for review")
    in_review = entry.status == JobStatus.REVIEW.value
    return render(request, "review.html", {
        "r": _row(entry, who), "colours": {s.name: _hex(s.colour) for s in entry.structures},
        "can_decide": in_review and who.role in OPERATOR_ROLES})
