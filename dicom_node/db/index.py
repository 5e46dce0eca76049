"""The one place with SQL for received instances: patients, studies, series (associations: ``associations``)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    Connection,
    CursorResult,
    Dialect,
    Result,
    bindparam,
    insert,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db.associations import carriers
from dicom_node.db.associations import close_association as close_association
from dicom_node.db.associations import close_dangling_associations as close_dangling_associations
from dicom_node.db.associations import open_association as open_association
from dicom_node.db.prepared import (
    PreparedStatement,
    commit_driver,
    driver_connection,
    open_cursor,
    prepare,
    rollback_driver,
)
from dicom_node.db.tables import (
    Instance,
    Patient,
    Series,
    SeriesState,
    Study,
    utcnow,
)
from dicom_node.errors import IndexError_

log = logging.getLogger(__name__)


def updated_rows(result: Result[Any]) -> int:
    """Rows an UPDATE changed: its result is a CursorResult, which the session's stubs type as Result."""
    return int(cast(CursorResult[Any], result).rowcount or 0)


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
    accession_number: str = ""  # PHI: stored on the study for the admin's search, never logged
    instance_number: int | None = None
    slice_position: float | None = None
    expected_count: int | None = None


def reattach_instance(factory: sessionmaker[Session], sop_uid: str, association_id: int | None) -> str | None:
    """An instance received again belongs from now on to the association that brought it (its
    release or abort is what counts for the series), and its series saw activity. Returns the
    path the index holds for it, None when the SOP Instance UID is not indexed."""
    try:
        with factory.begin() as session:
            row = session.execute(select(Instance.id, Instance.series_id, Instance.path)
                                  .where(Instance.sop_uid == sop_uid)).first()
            if row is None:
                return None
            session.execute(update(Instance).where(Instance.id == row[0]).values(association_id=association_id))
            session.execute(update(Series).where(Series.id == row[1], Series.state == SeriesState.RECEIVING)
                            .values(last_received_at=utcnow()))
            return str(row[2])
    except SQLAlchemyError as exc:
        raise IndexError_(f"cannot record a received duplicate: {exc}") from exc


def indexed_path(factory: sessionmaker[Session], sop_uid: str) -> str | None:
    """The file path the index holds for a SOP Instance UID, None when it is not indexed."""
    try:
        with factory() as session:
            return session.scalar(select(Instance.path).where(Instance.sop_uid == sop_uid))
    except SQLAlchemyError as exc:
        raise IndexError_(f"cannot look up instance: {exc}") from exc


def withdraw_instance(factory: sessionmaker[Session], sop_uid: str) -> None:
    """Remove the row of an instance whose file could not be stored (it was never acknowledged)."""
    try:
        with factory.begin() as session:
            row = session.scalar(select(Instance).where(Instance.sop_uid == sop_uid))
            if row is None:
                return
            session.execute(update(Series).where(Series.id == row.series_id)
                            .values(instance_count=Series.instance_count - 1))
            session.delete(row)
    except SQLAlchemyError as exc:
        raise IndexError_(f"cannot withdraw instance: {exc}") from exc


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
        study = Study(study_uid=meta.study_uid, patient_id=patient.id, study_date=meta.study_date,
                      accession_number=meta.accession_number[:16])
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
    """Commit the row of one stored instance; False when its SOP Instance UID was already known."""
    return record_batch(factory, [StoredInstance(meta, path, size, association_id)], {})[0]


@dataclass(frozen=True)
class StoredInstance:
    """An instance whose file is durably stored and whose row is still to be committed."""

    meta: InstanceMeta
    path: str
    size: int
    association_id: int | None


def record_batch(factory: sessionmaker[Session], items: list[StoredInstance],
                 series_ids: dict[str, int], connection: Connection | None = None) -> list[bool]:
    """Commit the rows of several stored instances in ONE transaction (one fsync for all).

    Returns, per item, True when it is new and False when its SOP Instance UID was already indexed.
    ``series_ids`` caches series UID -> row id between calls (only ids that were committed).
    ``connection``, when given, is used instead of one from the pool (the group committer keeps
    its own: checking one out and back in per batch cost as much CPU as the batch itself).
    """
    try:
        return _record_batch(factory, items, series_ids, connection)
    except IntegrityError:
        # two listeners (scale-out) created the same study or series at once: retry the slow way
        series_ids.clear()
        try:
            return _record_batch(factory, items, series_ids, connection)
        except SQLAlchemyError as exc:
            raise IndexError_(f"cannot index {len(items)} instance(s): {exc}") from exc
    except SQLAlchemyError as exc:
        raise IndexError_(f"cannot index {len(items)} instance(s): {exc}") from exc


_INSERT_CACHE: dict[str, Any] = {}
_INSTANCE_COLUMNS = ("sop_uid", "sop_class_uid", "transfer_syntax_uid", "series_id", "path", "size_bytes",
                     "instance_number", "slice_position", "association_id", "received_at")


def _insert_statement(dialect: str) -> Any:
    """INSERT ... ON CONFLICT (sop_uid) DO NOTHING, built once per dialect (it runs per instance)."""
    stmt = _INSERT_CACHE.get(dialect)
    if stmt is None:
        values: dict[str, Any] = {name: bindparam(name) for name in _INSTANCE_COLUMNS}
        if dialect == "sqlite":
            stmt = sqlite_insert(Instance).values(values).on_conflict_do_nothing(index_elements=["sop_uid"])
        elif dialect == "postgresql":
            stmt = pg_insert(Instance).values(values).on_conflict_do_nothing(index_elements=["sop_uid"])
        else:
            stmt = insert(Instance).values(values)
        _INSERT_CACHE[dialect] = stmt
    return stmt


_SERIES = Series.__table__
_BUMP_SERIES = (
    update(_SERIES)  # type: ignore[arg-type]
    .where(_SERIES.c.id == bindparam("sid"))
    .values(instance_count=_SERIES.c.instance_count + bindparam("n"),
            received_instances=_SERIES.c.received_instances + bindparam("n"),
            received_bytes=_SERIES.c.received_bytes + bindparam("b"),
            last_received_at=bindparam("now"), state=bindparam("state"))
)
_BUMP_TYPES = {"sid": _SERIES.c.id.type, "n": _SERIES.c.instance_count.type, "b": _SERIES.c.received_bytes.type,
               "now": _SERIES.c.last_received_at.type, "state": _SERIES.c.state.type}


@dataclass(frozen=True)
class _HotStatements:
    insert: PreparedStatement
    bump: PreparedStatement


_HOT_CACHE: dict[tuple[str, str], _HotStatements | None] = {}
# the drivers whose row counts and transactions the prepared path is tested with; others use SQLAlchemy
_HOT_DRIVERS = frozenset({("sqlite", "pysqlite"), ("postgresql", "psycopg2")})


def _hot_statements(dialect: Dialect) -> _HotStatements | None:
    """The per-instance INSERT and series UPDATE prepared for the driver, or None (SQLAlchemy's path)."""
    key = (dialect.name, dialect.driver)
    if key not in _HOT_CACHE:
        hot = None
        if key in _HOT_DRIVERS:
            columns = Instance.__table__.c
            ins = prepare(_insert_statement(dialect.name), dialect, {n: columns[n].type for n in _INSTANCE_COLUMNS})
            bump = prepare(_BUMP_SERIES, dialect, _BUMP_TYPES)
            hot = _HotStatements(ins, bump) if ins is not None and bump is not None else None
        _HOT_CACHE[key] = hot
    return _HOT_CACHE[key]


def _insert_ignoring_duplicates(conn: Connection, row: dict[str, object]) -> bool:
    dialect = conn.dialect.name
    if dialect not in ("sqlite", "postgresql"):  # portable: look first; the unique key guards a race
        if conn.scalar(select(Instance.id).where(Instance.sop_uid == row["sop_uid"])) is not None:
            return False
    return (conn.execute(_insert_statement(dialect), row).rowcount or 0) == 1


@contextmanager
def _transaction(factory: sessionmaker[Session], connection: Connection | None) -> Iterator[Connection]:
    if connection is None:
        with factory.kw["bind"].begin() as conn:
            yield conn
    else:
        with connection.begin():
            yield connection


def _instance_row(item: StoredInstance, series_id: int, now: datetime) -> dict[str, object]:
    meta = item.meta
    return dict(sop_uid=meta.sop_uid, sop_class_uid=meta.sop_class_uid, transfer_syntax_uid=meta.transfer_syntax_uid,
                series_id=series_id, path=item.path, size_bytes=item.size, instance_number=meta.instance_number,
                slice_position=meta.slice_position, association_id=item.association_id, received_at=now)


def _bump_params(series_id: int, new: tuple[int, int], now: datetime) -> dict[str, object]:
    # a dispatched series goes back to RECEIVING: late instances start a new job
    return {"sid": series_id, "n": new[0], "b": new[1], "now": now, "state": SeriesState.RECEIVING}


def _count_new(counts: dict[int, tuple[int, int]], series_id: int, size: int) -> None:
    """One more new instance of ``size`` bytes for the series' counters."""
    n, b = counts.get(series_id, (0, 0))
    counts[series_id] = (n + 1, b + size)


def _record_batch(factory: sessionmaker[Session], items: list[StoredInstance],
                  series_ids: dict[str, int], connection: Connection | None) -> list[bool]:
    if connection is not None and all(item.meta.series_uid in series_ids for item in items):
        hot = _hot_statements(connection.dialect)
        if hot is not None:
            return _record_on_driver(connection, hot, items, series_ids)
    fresh: dict[str, int] = {}
    outcome: list[bool] = []
    with _transaction(factory, connection) as conn:
        hot = _hot_statements(conn.dialect)
        cursor = open_cursor(driver_connection(conn), hot.insert.driver_error) if hot else None
        counts: dict[int, tuple[int, int]] = {}
        now = utcnow()
        for item in items:
            meta = item.meta
            series_id = series_ids.get(meta.series_uid) or fresh.get(meta.series_uid)
            if series_id is None:
                # first instance of a series (or a cold cache): the ORM path, in the same transaction
                with Session(bind=conn, expire_on_commit=False) as session:
                    series = _get_or_create_series(session, meta)
                    if meta.expected_count and not series.expected_count:
                        series.expected_count = meta.expected_count
                    session.flush()
                    series_id = fresh[meta.series_uid] = series.id
            row = _instance_row(item, series_id, now)
            new = hot.insert.run(cursor, row) == 1 if hot else _insert_ignoring_duplicates(conn, row)
            outcome.append(new)
            if new:
                _count_new(counts, series_id, item.size)
        for series_id, n in counts.items():
            if hot:
                hot.bump.run(cursor, _bump_params(series_id, n, now))
            else:
                conn.execute(_BUMP_SERIES, _bump_params(series_id, n, now))
    series_ids.update(fresh)
    if len(series_ids) > 10000:  # bounded: only recent series need the fast path
        series_ids.clear()
    return outcome


def _record_on_driver(connection: Connection, hot: _HotStatements, items: list[StoredInstance],
                      series_ids: dict[str, int]) -> list[bool]:
    """The batch of a receiver whose series are all known: two prepared statements and a commit on
    the driver's connection. The driver begins the transaction itself, and commit and rollback are
    the calls SQLAlchemy would make; its own transaction machinery is skipped, because in the
    committer thread it cost more GIL time than the statements."""
    dbapi_connection = driver_connection(connection)
    cursor = open_cursor(dbapi_connection, hot.insert.driver_error)
    now = utcnow()
    outcome: list[bool] = []
    counts: dict[int, tuple[int, int]] = {}
    try:
        for item in items:
            series_id = series_ids[item.meta.series_uid]
            new = hot.insert.run(cursor, _instance_row(item, series_id, now)) == 1
            outcome.append(new)
            if new:
                _count_new(counts, series_id, item.size)
        for series_id, n in counts.items():
            hot.bump.run(cursor, _bump_params(series_id, n, now))
        commit_driver(dbapi_connection, hot.insert.driver_error)
    except BaseException:
        rollback_driver(dbapi_connection, hot.insert.driver_error)
        raise
    return outcome


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
    # carrying associations that ended without A-RELEASE, plus one for instances of no recorded association
    unreleased_associations: int = 0
    last_release_at: datetime | None = None  # the latest A-RELEASE of a carrying association


def receiving_series(session: Session) -> list[SeriesView]:
    out: list[SeriesView] = []
    for series in session.scalars(select(Series).where(Series.state == SeriesState.RECEIVING)):
        open_count, unreleased, last_release = carriers(session, series.id)
        rows = session.execute(select(Instance.slice_position, Instance.instance_number)
                               .where(Instance.series_id == series.id)).all()
        out.append(SeriesView(
            id=series.id, series_uid=series.series_uid, modality=series.modality,
            description=series.description, body_part=series.body_part,
            instance_count=series.instance_count, dispatched_count=series.dispatched_count,
            expected_count=series.expected_count, last_received_at=series.last_received_at,
            open_associations=open_count,
            slice_positions=tuple(r[0] for r in rows if r[0] is not None),
            instance_numbers=tuple(r[1] for r in rows if r[1] is not None),
            unreleased_associations=unreleased, last_release_at=last_release,
        ))
    return out


def mark_series(session: Session, series_id: int, state: SeriesState, reason: str, dispatched_count: int) -> None:
    session.execute(update(Series).where(Series.id == series_id)
                    .values(state=state, completion_reason=reason[:128], dispatched_count=dispatched_count))


def series_instance_paths(session: Session, series_id: int) -> list[str]:
    return list(session.scalars(select(Instance.path).where(Instance.series_id == series_id).order_by(Instance.id)))
