"""The one place with SQL for inbound associations: recorded when accepted, closed as released or not.

Only a real A-RELEASE sets ``released``. An A-ABORT, a connection closed without release, and an
association still open when the listener starts again (it died during it) end with ``released``
False, and the completion policy (``dicom_node.series``) never counts them as released.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import CursorResult, and_, case, func, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db.tables import Association, Instance, utcnow
from dicom_node.errors import IndexError_


def open_association(factory: sessionmaker[Session], calling_ae: str, peer: str) -> int:
    try:
        with factory.begin() as session:
            row = Association(calling_ae=calling_ae, peer_address=peer)
            session.add(row)
            session.flush()
            return row.id
    except SQLAlchemyError as exc:
        raise IndexError_(f"cannot record association: {exc}") from exc


def close_association(factory: sessionmaker[Session], association_id: int, released: bool) -> None:
    try:
        with factory.begin() as session:
            session.execute(update(Association).where(Association.id == association_id)
                            .values(closed_at=utcnow(), released=released))
    except SQLAlchemyError as exc:
        raise IndexError_(f"cannot close association {association_id}: {exc}") from exc


def carriers(session: Session, series_id: int) -> tuple[int, int, datetime | None]:
    """(open, ended without release, latest release) over the associations that carried the series'
    instances; instances of no recorded association count as one unreleased carrier."""
    a, i = Association, Instance
    row = session.execute(
        select(func.count(func.distinct(case((a.closed_at.is_(None), a.id)))),
               func.count(func.distinct(case((and_(a.closed_at.is_not(None), a.released.is_(False)), a.id)))),
               func.max(case((a.released.is_(True), a.closed_at))),
               func.count(case((i.association_id.is_(None), i.id))))
        .select_from(i).outerjoin(a, a.id == i.association_id).where(i.series_id == series_id)
    ).one()
    last_release = row[2]
    if isinstance(last_release, str):  # SQLite gives an aggregate of a CASE back as text
        last_release = datetime.fromisoformat(last_release)
    if last_release is not None and last_release.tzinfo is None:
        last_release = last_release.replace(tzinfo=UTC)
    return int(row[0] or 0), int(row[1] or 0) + (1 if row[3] else 0), last_release


def close_dangling_associations(factory: sessionmaker[Session]) -> int:
    """At listener start, associations left open by a crash are closed (as not released)."""
    with factory.begin() as session:
        result = session.execute(update(Association).where(Association.closed_at.is_(None))
                                 .values(closed_at=utcnow(), released=False))
        return int(cast(CursorResult[Any], result).rowcount or 0)
