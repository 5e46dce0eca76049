"""The one place with SQL for the association audit: who connected, and what the listener did about it.

Rows are written in batches by the listener's audit thread (``receive/audit_log.py``), never on the
path that answers a peer. AE titles and addresses are stored; no patient data is ever part of a row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import insert, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db.tables import AssociationAudit, AuditResult, utcnow
from dicom_node.errors import IndexError_

AE_LENGTH, PEER_LENGTH, REASON_LENGTH = 16, 64, 200  # the columns' lengths (PostgreSQL refuses longer)


@dataclass(frozen=True)
class AuditEntry:
    """One accepted or rejected association, or one connection refused or dropped before it negotiated."""

    peer_address: str
    result: AuditResult
    reason: str = ""
    calling_ae: str = ""
    called_ae: str = ""
    at: datetime = field(default_factory=utcnow)

    def row(self) -> dict[str, object]:
        return {"at": self.at, "calling_ae": self.calling_ae.strip()[:AE_LENGTH],
                "called_ae": self.called_ae.strip()[:AE_LENGTH], "peer_address": self.peer_address[:PEER_LENGTH],
                "result": self.result, "reason": self.reason[:REASON_LENGTH]}


def record(factory: sessionmaker[Session], entries: Sequence[AuditEntry]) -> None:
    """Insert ``entries`` in one transaction."""
    if not entries:
        return
    try:
        with factory.begin() as session:
            session.execute(insert(AssociationAudit), [entry.row() for entry in entries])
    except SQLAlchemyError as exc:
        raise IndexError_(f"cannot write {len(entries)} association audit row(s): {type(exc).__name__}") from exc


def recent(session: Session, rejected_only: bool = False, limit: int = 50) -> list[AssociationAudit]:
    """The newest rows first; ``rejected_only`` leaves out accepted associations."""
    query = select(AssociationAudit).order_by(AssociationAudit.id.desc()).limit(limit)
    if rejected_only:
        query = query.where(AssociationAudit.result != AuditResult.ACCEPTED)
    try:
        return list(session.scalars(query))
    except SQLAlchemyError as exc:
        raise IndexError_(f"cannot read the association audit: {type(exc).__name__}") from exc
