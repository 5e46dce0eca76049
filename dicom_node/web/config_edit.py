"""Changes to the live config from the web admin: checked with the settings models, stored, audited with a diff.

Each change reads the current tables, changes one entry, validates the whole (the entry and the
checks across tables, such as a rule naming an unknown destination), and stores it only when nothing
is wrong, with the version it was read at (so two admins editing at once cannot overwrite each other).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from dicom_node.db import audit, config_store
from dicom_node.db.config_store import Tables
from dicom_node.live_config import problems_of
from dicom_node.settings.problems import Problem
from dicom_node.web.state import NodeState

_ENTRY_PATH = re.compile(r"^(?:destinations|routing\.rules|templates)\[(\d+)\]\.?(.*)$")
KIND_PATHS = {"destination": "destinations", "rule": "routing.rules", "template": "templates"}


@dataclass(frozen=True)
class FieldProblem:
    field: str  # the entry's key (``port``, ``match``), or "" for the entry as a whole
    path: str
    message: str


@dataclass(frozen=True)
class EditResult:
    version: int | None  # None: nothing stored
    problems: list[FieldProblem]

    @property
    def ok(self) -> bool:
        return self.version is not None

    def by_field(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for p in self.problems:
            out[p.field] = f"{out[p.field]}; {p.message}" if p.field in out else p.message
        return out


def _field_problems(problems: list[Problem], kind: str, position: int | None) -> list[FieldProblem]:
    out = []
    for p in problems:
        match = _ENTRY_PATH.match(p.path)
        mine = match is not None and p.path.startswith(KIND_PATHS[kind]) and position is not None \
            and int(match.group(1)) == position
        field = re.split(r"[.\[]", match.group(2))[0] if (mine and match) else ""
        out.append(FieldProblem(field, p.path, p.message))
    return out


def diff(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, Any]:
    """Key -> [old, new] for every key that differs (None where the entry did not or no longer exists)."""
    old, new = before or {}, after or {}
    return {key: [old.get(key), new.get(key)] for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)}


def _store(state: NodeState, actor: str, kind: str, target: str, tables: Tables, version: int | None,
           before: dict[str, Any] | None, after: dict[str, Any] | None, position: int | None) -> EditResult:
    problems = problems_of(tables, state.settings.structures)
    if problems:
        return EditResult(None, _field_problems(problems, kind, position))
    with state.factory.begin() as session:
        new_version = config_store.replace(session, {kind: tables[kind]}, version)
        audit.record(session, actor, "config-change", f"{kind} {target}",
                     {"version": new_version, "diff": diff(before, after),
                      "change": "added" if before is None else "deleted" if after is None else "edited"})
    return EditResult(new_version, [])


def _current(state: NodeState) -> tuple[Tables, int | None]:
    with state.factory() as session:
        return config_store.read(session), config_store.version(session)


def put(state: NodeState, actor: str, kind: str, original: str, body: dict[str, Any]) -> EditResult:
    """Add an entry, or replace the one named ``original`` (kept in its place; renamed when the names differ)."""
    tables, version = _current(state)
    entries = list(tables[kind])
    names = [str(e.get("name", "")) for e in entries]
    before = entries[names.index(original)] if original in names else None
    if before is None:
        entries.append(body)
        position = len(entries) - 1
    else:
        position = names.index(original)
        entries[position] = body
    tables[kind] = entries
    return _store(state, actor, kind, str(body.get("name", original)), tables, version, before, body, position)


def delete(state: NodeState, actor: str, kind: str, name: str) -> EditResult | None:
    """Remove an entry; None when there is none of that name."""
    tables, version = _current(state)
    names = [str(e.get("name", "")) for e in tables[kind]]
    if name not in names:
        return None
    before = tables[kind].pop(names.index(name))
    return _store(state, actor, kind, name, tables, version, before, None, None)


def move(state: NodeState, actor: str, kind: str, name: str, offset: int) -> EditResult | None:
    """Move an entry up (-1) or down (+1) in its list: the order rules are evaluated in."""
    tables, version = _current(state)
    names = [str(e.get("name", "")) for e in tables[kind]]
    if name not in names:
        return None
    old = names.index(name)
    new = max(0, min(len(names) - 1, old + offset))
    entries = tables[kind]
    entries.insert(new, entries.pop(old))
    problems = problems_of(tables, state.settings.structures)
    if problems:
        return EditResult(None, _field_problems(problems, kind, None))
    with state.factory.begin() as session:
        new_version = config_store.replace(session, {kind: entries}, version)
        audit.record(session, actor, "config-change", f"{kind} {name}",
                     {"version": new_version, "change": "moved", "diff": {"position": [old, new]}})
    return EditResult(new_version, [])


def tables(state: NodeState) -> Tables:
    """The live config's tables as stored."""
    return _current(state)[0]
