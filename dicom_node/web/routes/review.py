"""The review API: the queue of held jobs, one job's detail, and the decisions (approve all or some, reject).

Every role reads the queue (patient identifiers masked for viewers); admins and physicists decide,
with the CSRF token of their session or an API token. A decision on a job that is not in review is a
409; a structure the job does not have, or a blank reason, a 400. The HTML pages are elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, HTTPException, Path, Request
from sqlalchemy import select

from dicom_node.db.tables import Delivery
from dicom_node.errors import NotInReview, ReviewError, UnknownJob
from dicom_node.review import decisions
from dicom_node.review.decisions import Decision
from dicom_node.review.queue import review_entry, review_queue
from dicom_node.web.auth import OperatorWrite, Reader
from dicom_node.web.review_schemas import ApproveIn, RejectIn, ReviewDecisionOut, ReviewDetailOut, ReviewItemOut
from dicom_node.web.schemas import DeliveryOut
from dicom_node.web.state import node_state

router = APIRouter()
MAX_ID = 2**31 - 1
JOB_ID = Path(ge=1, le=MAX_ID)
DECISION_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "no such job"}, 409: {"description": "the job is not in review"},
    400: {"description": "a structure the job does not have, or a blank reason"}}


@router.get("/api/review", response_model=list[ReviewItemOut], tags=["review"])
def api_review_queue(request: Request, who: Reader) -> list[ReviewItemOut]:
    """The jobs waiting for a decision, the longest waiting first."""
    state = node_state(request)
    return [ReviewItemOut.of(entry, who.role) for entry in review_queue(state.settings, state.factory)]


@router.get("/api/review/{job_id}", response_model=ReviewDetailOut, tags=["review"],
            responses={404: {"description": "no job of that id was held for review"}})
def api_review_job(request: Request, who: Reader, job_id: int = JOB_ID) -> ReviewDetailOut:
    """A job that is or was held for review: its structures, and its decision and deliveries once decided."""
    state = node_state(request)
    entry = review_entry(state.settings, state.factory, job_id)
    if entry is None:
        raise HTTPException(status_code=404, detail=f"job {job_id} was never held for review")
    with state.factory() as session:
        rows = session.scalars(select(Delivery).where(Delivery.job_id == job_id).order_by(Delivery.id)).all()
        deliveries = [DeliveryOut.of(d) for d in rows]
    return ReviewDetailOut(**ReviewItemOut.of(entry, who.role).model_dump(), deliveries=deliveries)


def _decided(decide: Callable[[], Decision]) -> ReviewDecisionOut:
    try:
        decision = decide()
    except UnknownJob as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from exc
    except NotInReview as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from exc
    except ReviewError as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from exc
    return ReviewDecisionOut.of(decision)


@router.post("/api/review/{job_id}/approve", response_model=ReviewDecisionOut, tags=["review"],
             responses=DECISION_ERRORS)
def api_approve(request: Request, who: OperatorWrite, body: ApproveIn, job_id: int = JOB_ID) -> ReviewDecisionOut:
    """Send the job's outputs: all of them (keep null), or rebuilt with only the kept structures; the
    RTSTRUCT says APPROVED by you."""
    state = node_state(request)
    return _decided(lambda: decisions.approve(state.settings, state.factory, job_id, who.name, body.keep))


@router.post("/api/review/{job_id}/reject", response_model=ReviewDecisionOut, tags=["review"],
             responses=DECISION_ERRORS)
def api_reject(request: Request, who: OperatorWrite, body: RejectIn, job_id: int = JOB_ID) -> ReviewDecisionOut:
    """Reject the job's outputs with a reason: nothing is sent."""
    factory = node_state(request).factory
    return _decided(lambda: decisions.reject(factory, job_id, who.name, body.reason))
