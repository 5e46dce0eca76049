"""Deliveries: per destination, each object with attempts, next try, last error and the dead letter;
*Retry* one and *Retry all dead* (the functions ``dicom-node retry`` uses), audited."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.responses import RedirectResponse

from dicom_node.db import audit, job_actions, overview
from dicom_node.db.job_actions import JobActionError
from dicom_node.db.tables import Delivery, DeliveryStatus
from dicom_node.web.auth import OperatorWrite, Principal, Reader
from dicom_node.web.schemas import ActionOut, DeliveryOut
from dicom_node.web.state import node_state, render

router = APIRouter()
MAX_ID = 2**31 - 1
STATUSES = "|".join(s.value for s in DeliveryStatus)
STATUS = Query("", pattern=f"^({STATUSES})?$")
DESTINATION = Query("", max_length=64)


def delivery_list(request: Request, status: str, destination: str, limit: int) -> list[DeliveryOut]:
    with node_state(request).factory() as session:
        return [DeliveryOut.of(d) for d in overview.deliveries_list(session, status, destination, limit)]


def per_destination(request: Request) -> dict[str, dict[str, int]]:
    """Destination -> deliveries by state (every state named, 0 where none)."""
    with node_state(request).factory() as session:
        counts = overview.deliveries_by_outcome(session)
    out: dict[str, dict[str, int]] = {}
    for (dest, outcome), count in sorted(counts.items()):
        out.setdefault(dest, {s.value: 0 for s in DeliveryStatus})[outcome] = count
    return out


def retry_one(request: Request, who: Principal, delivery_id: int) -> ActionOut:
    with node_state(request).factory.begin() as session:
        row = session.get(Delivery, delivery_id)
        if row is None:
            raise HTTPException(status_code=404, detail=f"no delivery {delivery_id}")
        try:
            message = job_actions.retry_delivery(session, delivery_id)
        except JobActionError as exc:
            raise HTTPException(status_code=409, detail=str(exc)) from exc
        audit.record(session, who.name, "retry", f"delivery {delivery_id}",
                     {"result": message, "job": row.job_id, "destination": row.destination, "kind": row.kind})
    return ActionOut(ok=True, message=f"delivery {delivery_id}: {message}")


def retry_all_dead(request: Request, who: Principal) -> ActionOut:
    with node_state(request).factory.begin() as session:
        count, job_ids = job_actions.retry_dead_deliveries(session)
        audit.record(session, who.name, "retry", "dead deliveries", {"deliveries": count, "jobs": job_ids})
    return ActionOut(ok=True, message=f"{count} dead deliveries queued again")


@router.get("/api/deliveries", response_model=list[DeliveryOut], tags=["deliveries"])
def api_deliveries(request: Request, _who: Reader, status: str = STATUS, destination: str = DESTINATION,
                   limit: int = Query(200, ge=1, le=1000)) -> list[DeliveryOut]:
    return delivery_list(request, status, destination, limit)


@router.get("/api/deliveries/by-destination", response_model=dict[str, dict[str, int]], tags=["deliveries"])
def api_per_destination(request: Request, _who: Reader) -> dict[str, dict[str, int]]:
    return per_destination(request)


@router.post("/api/deliveries/retry-dead", response_model=ActionOut, tags=["deliveries"])
def api_retry_dead(request: Request, who: OperatorWrite) -> ActionOut:
    return retry_all_dead(request, who)


@router.post("/api/deliveries/{delivery_id}/retry", response_model=ActionOut, tags=["deliveries"],
             responses={404: {"description": "no such delivery"}, 409: {"description": "already sent"}})
def api_retry_delivery(request: Request, who: OperatorWrite, delivery_id: int = Path(ge=1, le=MAX_ID)) -> ActionOut:
    return retry_one(request, who, delivery_id)


def _page(request: Request, status: str, destination: str, message: str = "") -> Any:
    return render(request, "deliveries.html", {"rows": delivery_list(request, status, destination, 500),
                                               "summary": per_destination(request), "status": status,
                                               "destination": destination, "message": message})


@router.get("/deliveries", include_in_schema=False)
def deliveries_page(request: Request, _who: Reader, status: str = STATUS, destination: str = DESTINATION) -> Any:
    return _page(request, status, destination)


@router.post("/deliveries/retry-dead", include_in_schema=False)
def retry_dead_form(request: Request, who: OperatorWrite) -> Any:
    return _page(request, "", "", retry_all_dead(request, who).message)


@router.post("/deliveries/{delivery_id}/retry", include_in_schema=False)
def retry_delivery_form(request: Request, who: OperatorWrite, delivery_id: int = Path(ge=1, le=MAX_ID)) -> Any:
    retry_one(request, who, delivery_id)
    return RedirectResponse("/deliveries", status_code=303)
