"""Alembic environment: runs on the engine the node passes in (no URL in an ini file)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from dicom_node.db.tables import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    engine = config.attributes.get("connection_engine")
    if engine is None:  # alembic CLI use (autogenerate during development)
        engine = create_engine(config.get_main_option("sqlalchemy.url") or "sqlite:///dev.sqlite")
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata,
                          render_as_batch=connection.dialect.name == "sqlite")
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


run_migrations_online()
