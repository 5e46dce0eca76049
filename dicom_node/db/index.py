"""The one place with SQL for received instances: patients, studies, series, associations."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db.tables import (
    Association,
    Instance,
    Patient,
    Series,
    SeriesState,
    Study,
    utcnow,
)
from dicom_node.errors import IndexError_

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InstanceMeta:
    """What the receiver learns from one instance's header, before anything is written."""

    sop_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    study_uid: str
    series_uid: str
    patient_key: str
    modality: str
    series_description: str = ""
    body_part: str = ""
    study_date: str = ""
    instance_number: int | None = None
    slice_position: float | None = None
    expected_count: int | None = None


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


def instance_exists(factory: sessionmaker[Session], sop_uid: str) -> bool:
    try:
        with factory() as session:
            return session.scalar(select(Instance.id).where(Instance.sop_uid == sop_uid)) is not None
    except SQLAlchemyError as exc:
        raise IndexError_(f"cannot look up instance: {exc}") from exc


def _get_or_create_series(session: Session, meta: InstanceMeta) -> Series:
    series = session.scalar(select(Series).where(Series.series_uid == meta.series_uid))
    if series is not None:
        return series
    patient = session.scalar(select(Patient).where(Patient.patient_key == meta.patient_key))
    if patient is None:
        patient = Patient(patient_key=meta.patient_key)
        session.add(patient)
        session.flush()
    study = session.scalar(select(Study).where(Study.study_uid == meta.study_uid))
    if study is None:
        study = Study(study_uid=meta.study_uid, patient_id=patient.id, study_date=meta.study_date)
        session.add(study)
        session.flush()
    series = Series(series_uid=meta.series_uid, study_id=study.id, modality=meta.modality,
                    description=meta.series_description[:64], body_part=meta.body_part[:16],
                    expected_count=meta.expected_count)
    session.add(series)
    session.flush()
    return series


def record_instance(factory: sessionmaker[Session], meta: InstanceMeta, path: str, size: int,
                    association_id: int | None) -> bool:
    """Commit the row of a stored instance. Returns False when the SOP Instance UID was already known.

    A series that was already dispatched goes back to RECEIVING: a late instance starts a new job
    once the series is complete again, it is never dropped.
    """
    for attempt in range(3):  # two associations may create the same study/series at once
        try:
            with factory.begin() as session:
                if session.scalar(select(Instance.id).where(Instance.sop_uid == meta.sop_uid)) is not None:
                    return False
                series = _get_or_create_series(session, meta)
                now = utcnow()
                session.add(Instance(
                    sop_uid=meta.sop_uid, sop_class_uid=meta.sop_class_uid,
                    transfer_syntax_uid=meta.transfer_syntax_uid, series_id=series.id, path=path,
                    size_bytes=size, instance_number=meta.instance_number,
                    slice_position=meta.slice_position, association_id=association_id, received_at=now,
                ))
                values: dict[str, object] = {"instance_count": Series.instance_count + 1, "last_received_at": now}
                if series.state != SeriesState.RECEIVING:
                    values["state"] = SeriesState.RECEIVING
                if meta.expected_count and not series.expected_count:
                    values["expected_count"] = meta.expected_count
                session.execute(update(Series).where(Series.id == series.id).values(**values))
            return True
        except IntegrityError as exc:
            if attempt == 2:
                raise IndexError_(f"cannot index instance: {exc.orig}") from exc
            log.debug("concurrent insert while indexing, retrying: %s", exc.orig)
        except SQLAlchemyError as exc:
            raise IndexError_(f"cannot index instance: {exc}") from exc
    return False  # unreachable; keeps type checkers content


@dataclass(frozen=True)
class SeriesView:
    """What the completion sweep reads of one series still receiving."""

    id: int
    series_uid: str
    modality: str
    description: str
    body_part: str
    instance_count: int
    dispatched_count: int
    expected_count: int | None
    last_received_at: datetime
    open_associations: int
    slice_positions: tuple[float, ...]
    instance_numbers: tuple[int, ...]


def receiving_series(session: Session) -> list[SeriesView]:
    out: list[SeriesView] = []
    for series in session.scalars(select(Series).where(Series.state == SeriesState.RECEIVING)):
        open_count = session.scalar(
            select(func.count(func.distinct(Association.id)))
            .join(Instance, Instance.association_id == Association.id)
            .where(Instance.series_id == series.id, Association.closed_at.is_(None))
        ) or 0
        rows = session.execute(select(Instance.slice_position, Instance.instance_number)
                               .where(Instance.series_id == series.id)).all()
        out.append(SeriesView(
            id=series.id, series_uid=series.series_uid, modality=series.modality,
            description=series.description, body_part=series.body_part,
            instance_count=series.instance_count, dispatched_count=series.dispatched_count,
            expected_count=series.expected_count, last_received_at=series.last_received_at,
            open_associations=int(open_count),
            slice_positions=tuple(r[0] for r in rows if r[0] is not None),
            instance_numbers=tuple(r[1] for r in rows if r[1] is not None),
        ))
    return out


def mark_series(session: Session, series_id: int, state: SeriesState, reason: str, dispatched_count: int) -> None:
    session.execute(update(Series).where(Series.id == series_id)
                    .values(state=state, completion_reason=reason[:128], dispatched_count=dispatched_count))


def series_instance_paths(session: Session, series_id: int) -> list[str]:
    return list(session.scalars(select(Instance.path).where(Instance.series_id == series_id).order_by(Instance.id)))


def close_dangling_associations(factory: sessionmaker[Session]) -> int:
    """At listener start, associations left open by a crash are closed (as not released)."""
    with factory.begin() as session:
        result = session.execute(update(Association).where(Association.closed_at.is_(None))
                                 .values(closed_at=utcnow(), released=False))
        return int(result.rowcount or 0)
