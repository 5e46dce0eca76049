"""Engine and session factory: SQLite (embedded default) or PostgreSQL, schema via Alembic."""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.errors import IndexError_
from dicom_node.private_files import create_private_file, make_private_dirs

log = logging.getLogger(__name__)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the listener write while the worker reads; FULL makes a commit durable before the
    # receiver answers success; busy_timeout makes two processes wait for each other, not fail.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: str) -> Engine:
    """Create the engine for ``url``; a SQLite file is created 0600 in a folder made 0700 if missing."""
    kwargs: dict[str, Any] = {"future": True}
    if url.startswith("sqlite"):
        path = _sqlite_file(url)
        if path is not None:
            _create_private_sqlite(path)
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    else:
        kwargs["pool_pre_ping"] = True
    try:
        engine = create_engine(url, **kwargs)
    except (SQLAlchemyError, ImportError) as exc:
        raise IndexError_(f"cannot use database URL {_redact(url)}: {exc}") from exc
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL; None for an in-memory database (or a URL that
    ``create_engine`` will refuse with its own message)."""
    try:
        database = make_url(url).database
    except ArgumentError:
        return None
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def _create_private_sqlite(path: Path) -> None:
    """The index names patients: SQLite would create the file with the umask's mode (0644 under
    umask 022). Made empty and 0600 here first (an empty file is an empty database), it is opened
    as it is, and SQLite gives its -wal and -shm files the database file's mode."""
    try:
        make_private_dirs(path.parent)
        create_private_file(path)
    except OSError as exc:
        raise IndexError_(f"cannot create the SQLite index {path}: {exc.strerror or exc}") from exc


def _redact(url: str) -> str:
    """Hide a password in a URL before it reaches a log or an error message."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url


def alembic_config(engine: Engine) -> Config:
    script_dir = resources.files("dicom_node.db").joinpath("migrations")
    config = Config()
    config.set_main_option("script_location", str(script_dir))
    config.attributes["connection_engine"] = engine
    return config


def upgrade_schema(engine: Engine) -> None:
    """Bring the schema to the newest migration (idempotent)."""
    try:
        command.upgrade(alembic_config(engine), "head")
    except SQLAlchemyError as exc:
        raise IndexError_(f"cannot migrate database {_redact(str(engine.url))}: {exc}") from exc


def open_index(url: str) -> sessionmaker[Session]:
    """Engine + migrations + session factory: what every process calls once at start."""
    engine = make_engine(url)
    upgrade_schema(engine)
    log.info("index ready at %s", _redact(url))
    return sessionmaker(engine, expire_on_commit=False)
