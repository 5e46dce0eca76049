"""The live config: destinations, routing rules and templates kept in the index, edited without a restart.

The TOML seeds them the first time a process opens the index with this module; from then on the
index holds them (``dicom-node config export|import`` and the web admin change them). They are
checked by the same settings models as the TOML, with the same error paths (``destinations[0].port``).
Every change raises a version number; :class:`LiveConfig` reads it once per call (one indexed row)
and rebuilds its :class:`~dicom_node.settings.Settings` only when it moved, so the completion sweep
routes each series with the config of that moment. Jobs store their routed action, so a change never
alters a job already queued.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Collection
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db import config_store
from dicom_node.db.config_store import Tables
from dicom_node.errors import ConfigError
from dicom_node.settings import ConfigDocument, Destination, RoutingRule, Settings, Template
from dicom_node.settings.crosschecks import cross_check
from dicom_node.settings.notifications import NotificationSettings, rule_recipient_problems
from dicom_node.settings.problems import Problem, config_error, problems_from
from dicom_node.settings.structures import template_structure_problems
from dicom_node.settings.tls import tls_problems

log = logging.getLogger(__name__)

_ADAPTERS: dict[str, tuple[TypeAdapter[Any], tuple[str, ...]]] = {
    "destination": (TypeAdapter(tuple[Destination, ...]), ("destinations",)),
    "rule": (TypeAdapter(tuple[RoutingRule, ...]), ("routing", "rules")),
    "template": (TypeAdapter(tuple[Template, ...]), ("templates",)),
}


def tables_of(settings: Settings) -> Tables:
    """The settings' destinations, rules and templates as TOML-shaped tables (JSON values; TOML has no
    null, so an unset optional value is left out)."""
    def dumped(adapter: TypeAdapter[Any], values: Any) -> list[Any]:
        return [adapter.dump_python(v, mode="json", exclude_none=True) for v in values]

    return {
        "destination": dumped(TypeAdapter(Destination), settings.destinations.values()),
        "rule": dumped(TypeAdapter(RoutingRule), settings.rules),
        "template": dumped(TypeAdapter(Template), settings.templates.values()),
    }


def document_of(tables: Tables) -> dict[str, Any]:
    """The tables as the part of a config document they are (the shape cross-checks and errors speak)."""
    return {"destinations": tables.get("destination", []), "routing": {"rules": tables.get("rule", [])},
            "templates": tables.get("template", [])}


def problems_of(tables: Tables, structures: Collection[str] = (),
                notifications: NotificationSettings | None = None) -> list[Problem]:
    """Every problem of the tables: each one on its own, then across them (unknown destination, duplicates).

    ``structures``: the department's own structure names (the TOML's [[structures]]), which templates may use.
    ``notifications``: also a rule's ``notify`` naming a webhook it does not have (an edit is checked so; the
    stored config is not, so a webhook removed from the TOML never makes it unreadable)."""
    problems: list[Problem] = []
    for kind, (adapter, prefix) in _ADAPTERS.items():
        try:
            adapter.validate_python(tables.get(kind, []))
        except ValidationError as exc:
            problems.extend(problems_from(exc, ConfigDocument, prefix))
    problems.extend(template_structure_problems(document_of(tables), structures))
    problems.extend(p for p in cross_check(document_of(tables))
                    if p.path.startswith(("destinations", "routing", "templates")))
    if notifications is not None:
        problems.extend(rule_recipient_problems(notifications, tables.get("rule", [])))
    # a destination's TLS files must load, as at start; stored paths are absolute (seeded from resolved
    # settings), a relative one typed in the browser is the processes' working directory's
    problems.extend(tls_problems(document_of(tables), Path.cwd()))
    return problems


def settings_with(base: Settings, tables: Tables) -> Settings:
    """``base`` with the tables' destinations, rules and templates; ConfigError listing every problem."""
    problems = problems_of(tables, base.structures)
    if problems:
        raise config_error(problems)
    destinations = _ADAPTERS["destination"][0].validate_python(tables.get("destination", []))
    rules = _ADAPTERS["rule"][0].validate_python(tables.get("rule", []))
    templates = _ADAPTERS["template"][0].validate_python(tables.get("template", []))
    return dataclasses.replace(base, destinations={d.name: d for d in destinations}, rules=tuple(rules),
                               templates={t.name: t for t in templates})


def seed_from(settings: Settings, factory: sessionmaker[Session]) -> bool:
    """Store the TOML's tables as the live config unless the index has one already. True when seeded now."""
    try:
        with factory.begin() as session:
            seeded = config_store.seed(session, tables_of(settings))
    except IntegrityError:  # another process seeded it at the same moment
        return False
    if seeded:
        log.info("live configuration seeded from %s", settings.source or "the settings given")
    return seeded


class LiveConfig:
    """The settings of the moment: the TOML's, with the index's destinations, rules and templates."""

    def __init__(self, base: Settings, factory: sessionmaker[Session]) -> None:
        self.base = base
        self.factory = factory
        self._lock = threading.Lock()
        self._version: int | None = None
        self._settings = base
        seed_from(base, factory)

    def current(self) -> Settings:
        with self.factory() as session:
            version = config_store.version(session)
            if version == self._version:
                return self._settings
            tables = config_store.read(session)
        with self._lock:
            try:
                self._settings = settings_with(self.base, tables)
            except ConfigError:  # an invalid stored config (edited outside the node): keep the last good one
                log.exception("live configuration version %s is invalid; keeping version %s", version, self._version)
                return self._settings
            if self._version is not None:
                log.info("live configuration version %s loaded (was %s)", version, self._version)
            self._version = version
            return self._settings
