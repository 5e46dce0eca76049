"""The only SQL for the audit log: who did what, when, to what, with the details (a diff for a change)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_node.db.admin_tables import AuditEntry


@dataclass(frozen=True)
class AuditView:
    id: int
    at: datetime
    actor: str
    action: str
    target: str
    details: dict[str, Any]


def record(session: Session, actor: str, action: str, target: str = "", details: dict[str, Any] | None = None) -> None:
    session.add(AuditEntry(actor=actor[:64], action=action[:32], target=target[:200],
                           details=json.dumps(details or {}, sort_keys=True, default=str)))


def recent(session: Session, limit: int = 200, action: str = "") -> list[AuditView]:
    query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
    if action:
        query = query.where(AuditEntry.action == action)
    return [AuditView(e.id, e.at, e.actor, e.action, e.target, json.loads(e.details or "{}"))
            for e in session.scalars(query)]
