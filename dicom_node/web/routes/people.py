"""The audit log (admins and physicists). The users page is ``users_admin``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request

from dicom_node.db import audit
from dicom_node.web.auth import Operator
from dicom_node.web.schemas import AuditOut
from dicom_node.web.state import node_state, render

router = APIRouter()


def audit_list(request: Request, action: str, limit: int) -> list[AuditOut]:
    with node_state(request).factory() as session:
        return [AuditOut(**e.__dict__) for e in audit.recent(session, limit, action)]


@router.get("/api/audit", response_model=list[AuditOut], tags=["audit"])
def api_audit(request: Request, _who: Operator, action: str = Query("", max_length=32),
              limit: int = Query(200, ge=1, le=1000)) -> list[AuditOut]:
    return audit_list(request, action, limit)


@router.get("/audit", include_in_schema=False)
def audit_page(request: Request, _who: Operator, action: str = Query("", max_length=32)) -> Any:
    return render(request, "audit.html", {"rows": audit_list(request, action, 500), "action": action})

