"""The audit log (admins and physicists) and the users (admins); users are managed with ``dicom-node users``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request

from dicom_node.db import audit, users
from dicom_node.web.auth import Admin, Operator
from dicom_node.web.schemas import AuditOut, UserOut
from dicom_node.web.state import node_state, render

router = APIRouter()


def audit_list(request: Request, action: str, limit: int) -> list[AuditOut]:
    with node_state(request).factory() as session:
        return [AuditOut(**e.__dict__) for e in audit.recent(session, limit, action)]


def user_list(request: Request) -> list[UserOut]:
    with node_state(request).factory() as session:
        tokens = users.token_counts(session)
        return [UserOut(name=u.name, role=u.role.value, disabled=u.disabled, created_at=u.created_at,
                        api_tokens=tokens.get(u.id, 0)) for u in users.list_users(session)]


@router.get("/api/audit", response_model=list[AuditOut], tags=["audit"])
def api_audit(request: Request, _who: Operator, action: str = Query("", max_length=32),
              limit: int = Query(200, ge=1, le=1000)) -> list[AuditOut]:
    return audit_list(request, action, limit)


@router.get("/api/users", response_model=list[UserOut], tags=["users"])
def api_users(request: Request, _who: Admin) -> list[UserOut]:
    return user_list(request)


@router.get("/audit", include_in_schema=False)
def audit_page(request: Request, _who: Operator, action: str = Query("", max_length=32)) -> Any:
    return render(request, "audit.html", {"rows": audit_list(request, action, 500), "action": action})


@router.get("/users", include_in_schema=False)
def users_page(request: Request, _who: Admin) -> Any:
    return render(request, "users.html", {"rows": user_list(request)})
