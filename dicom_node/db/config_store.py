"""The only SQL for the live config: destinations, routing rules and templates as JSON rows, and its version.

Each row's body is its TOML table as JSON; validation is :mod:`dicom_node.live_config`'s. Every write
replaces the entries of the tables it changes and raises the version by one, in one transaction.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from dicom_node.db.admin_tables import ConfigEntry, ConfigState
from dicom_node.db.index import updated_rows
from dicom_node.errors import DicomNodeError

KINDS = ("destination", "rule", "template")
Tables = dict[str, list[dict[str, Any]]]  # kind -> its tables in order


def version(session: Session) -> int | None:
    """The live config's version; None before it was seeded."""
    return session.scalar(select(ConfigState.version).where(ConfigState.id == 1))


def seed(session: Session, tables: Tables) -> bool:
    """Store ``tables`` as version 1 unless the config was seeded before; True when this call seeded it."""
    if version(session) is not None:
        return False
    session.add(ConfigState(id=1, version=1))
    session.flush()  # two processes seeding at once: the second one's primary key clash ends its transaction
    _write(session, tables)
    return True


def read(session: Session) -> Tables:
    out: Tables = {kind: [] for kind in KINDS}
    for entry in session.scalars(select(ConfigEntry).order_by(ConfigEntry.kind, ConfigEntry.position)):
        out.setdefault(entry.kind, []).append(json.loads(entry.body))
    return out


def replace(session: Session, tables: Tables, expected_version: int | None = None) -> int:
    """Replace the kinds given with ``tables`` and bump the version (refused when it moved since
    ``expected_version``: two admins editing at once). Returns the new version."""
    query = update(ConfigState).where(ConfigState.id == 1).values(version=ConfigState.version + 1)
    if expected_version is not None:
        query = query.where(ConfigState.version == expected_version)
    if updated_rows(session.execute(query)) != 1:
        raise StaleConfigError("the configuration was changed meanwhile; reload and try again")
    session.execute(delete(ConfigEntry).where(ConfigEntry.kind.in_(list(tables))))
    _write(session, tables)
    return int(version(session) or 0)


def _write(session: Session, tables: Tables) -> None:
    for kind, entries in tables.items():
        for position, body in enumerate(entries):
            session.add(ConfigEntry(kind=kind, name=str(body.get("name", ""))[:64], position=position,
                                    body=json.dumps(body, sort_keys=True)))


class StaleConfigError(DicomNodeError):
    """The live config's version moved under a writer."""
