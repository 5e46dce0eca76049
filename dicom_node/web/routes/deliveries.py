"""Deliveries: each object to each destination, with attempts, next try and last error."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request

from dicom_node.db import overview
from dicom_node.db.tables import DeliveryStatus
from dicom_node.web.auth import Reader
from dicom_node.web.schemas import DeliveryOut
from dicom_node.web.state import node_state, render

router = APIRouter()
STATUSES = "|".join(s.value for s in DeliveryStatus)
STATUS = Query("", pattern=f"^({STATUSES})?$")
DESTINATION = Query("", max_length=64)


def delivery_list(request: Request, status: str, destination: str, limit: int) -> list[DeliveryOut]:
    with node_state(request).factory() as session:
        return [DeliveryOut.of(d) for d in overview.deliveries_list(session, status, destination, limit)]


@router.get("/api/deliveries", response_model=list[DeliveryOut], tags=["deliveries"])
def api_deliveries(request: Request, _who: Reader, status: str = STATUS, destination: str = DESTINATION,
                   limit: int = Query(200, ge=1, le=1000)) -> list[DeliveryOut]:
    return delivery_list(request, status, destination, limit)


@router.get("/deliveries", include_in_schema=False)
def deliveries_page(request: Request, _who: Reader, status: str = STATUS, destination: str = DESTINATION) -> Any:
    return render(request, "deliveries.html", {"rows": delivery_list(request, status, destination, 500),
                                               "status": status, "destination": destination})
