"""Engine and session factory: SQLite (embedded default) or PostgreSQL, schema via Alembic."""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.errors import IndexError_

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
    """Create the engine for ``url``; the parent folder of a SQLite file is created."""
    kwargs: dict[str, Any] = {"future": True}
    if url.startswith("sqlite"):
        path = url.split("sqlite:///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
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
