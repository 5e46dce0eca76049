"""Statements prepared for the driver: compiled once, bind processors applied, errors as SQLAlchemy's."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

import pytest
from sqlalchemy import bindparam, create_engine, insert, update
from sqlalchemy.dialects import mssql, sqlite
from sqlalchemy.exc import IntegrityError

from dicom_node.db.prepared import prepare
from dicom_node.db.tables import Base, Patient, Series, SeriesState


def test_qmark_statement_applies_the_columns_bind_processors() -> None:
    table = Series.__table__
    stmt = (update(table).where(table.c.id == bindparam("study")).values(
        description=bindparam("uid"), state=bindparam("state"), last_received_at=bindparam("now")))
    types = {"uid": table.c.description.type, "study": table.c.id.type, "state": table.c.state.type,
             "now": table.c.last_received_at.type}
    prepared = prepare(stmt, create_engine("sqlite://").dialect, types)
    assert prepared is not None and prepared.positional
    assert prepared.sql.count("?") == 4

    class Recorder:
        rowcount = 1

        def execute(self, sql: str, params: tuple[object, ...]) -> None:
            self.params = dict(zip(prepared.names, params, strict=True))

    cursor = Recorder()
    now = datetime(2026, 11, 23, 14, 0, 0, 123456, tzinfo=UTC)
    assert prepared.run(cursor, {"uid": "1.2", "study": 7, "state": SeriesState.RECEIVING, "now": now}) == 1
    # the enum is stored by name and the UTC datetime as SQLite's text, as SQLAlchemy would store them
    assert cursor.params["state"] == "RECEIVING"
    assert cursor.params["now"] == "2026-11-23 14:00:00.123456"
    assert cursor.params["uid"] == "1.2" and cursor.params["study"] == 7
    # the processors remember their last value: a new value (even an equal-looking one) is processed
    later = datetime(2026, 11, 23, 15, 30, 0, 0, tzinfo=UTC)
    prepared.run(cursor, {"uid": "1.3", "study": 8, "state": SeriesState.DISPATCHED, "now": later})
    assert cursor.params == {"uid": "1.3", "study": 8, "state": "DISPATCHED", "now": "2026-11-23 15:30:00.000000"}
    prepared.run(cursor, {"uid": "1.2", "study": 7, "state": SeriesState.RECEIVING, "now": now})
    assert cursor.params["now"] == "2026-11-23 14:00:00.123456" and cursor.params["state"] == "RECEIVING"


def test_a_bind_without_a_type_is_refused_and_other_paramstyles_are_not_prepared() -> None:
    stmt = insert(Patient.__table__).values(patient_key=bindparam("key"))
    with pytest.raises(ValueError, match=r"no column type given for bind parameter\(s\) \['key'\]"):
        prepare(stmt, sqlite.dialect(), {})
    assert prepare(stmt, mssql.dialect(), {"key": Patient.__table__.c.patient_key.type}) is None


def test_driver_errors_become_sqlalchemy_errors() -> None:
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    table = Patient.__table__
    prepared = prepare(insert(table).values(patient_key=bindparam("key")), engine.dialect,
                       {"key": table.c.patient_key.type})
    assert prepared is not None
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        assert prepared.run(cursor, {"key": "P1"}) == 1
        with pytest.raises(IntegrityError) as info:
            prepared.run(cursor, {"key": "P1"})  # patient_key is unique
        assert isinstance(info.value.orig, sqlite3.IntegrityError)
    finally:
        raw.close()
