"""Checks that span tables: unique names, rules naming configured destinations and templates, worker timing,
a destination's back-off, the emergency clean-up's disk threshold.

They read the raw TOML document, not the validated one, so they run (and report in the same list)
even when some table is invalid; a table too broken to read is skipped here, its own errors say why.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from dicom_node.settings.problems import Problem
from dicom_node.settings.sections import (
    DEFAULT_MIN_FREE_DISK_MB,
    DEFAULT_RETRY_BACKOFF_SECONDS,
    DEFAULT_RETRY_MAX_BACKOFF_SECONDS,
    HousekeepingSettings,
    WorkerSettings,
)


def cross_check(data: dict[str, Any]) -> list[Problem]:
    """Every cross-table problem of a parsed TOML document."""
    destinations = _named_tables(data.get("destinations", []))
    templates = _named_tables(data.get("templates", []))
    routing = data.get("routing", {})
    rules = _named_tables(routing.get("rules", []) if isinstance(routing, dict) else None)
    problems = [*_duplicates(destinations, "destinations", "destination"),
                *_duplicates(templates, "templates", "template"),
                *_duplicates(_named_tables(data.get("structures", [])), "structures", "structure"),
                *_duplicates(rules, "routing.rules", "rule")]
    for index, rule in _tables(routing.get("rules", []) if isinstance(routing, dict) else None):
        where = f"routing.rules[{index}]"
        if destinations is not None:
            wanted = rule.get("destinations", [])
            for position, name in enumerate(wanted if isinstance(wanted, list) else []):
                if isinstance(name, str) and name not in destinations.values():
                    problems.append(Problem(f"{where}.destinations[{position}]",
                                            f"{name!r} is not a configured destination "
                                            f"(known: {_known(destinations)})"))
        template = rule.get("template", "")
        if templates is not None and isinstance(template, str) and template and template not in templates.values():
            problems.append(Problem(f"{where}.template", f"{template!r} is not a configured template "
                                                         f"(known: {_known(templates)})"))
    problems.extend(_worker_timing(data.get("worker", {})))
    for index, destination in _tables(data.get("destinations", [])):
        problems.extend(_backoff(index, destination))
    problems.extend(_emergency_threshold(data.get("node", {}), data.get("housekeeping", {})))
    return problems


def _tables(raw: object) -> Iterator[tuple[int, dict[str, Any]]]:
    for index, table in enumerate(raw if isinstance(raw, list) else []):
        if isinstance(table, dict):
            yield index, table


def _named_tables(raw: object) -> dict[int, str] | None:
    """Index -> name of an array of tables; None when it is not an array (nothing can be checked against it)."""
    if not isinstance(raw, list):
        return None
    return {index: table["name"] for index, table in _tables(raw) if isinstance(table.get("name"), str)}


def _duplicates(names: dict[int, str] | None, where: str, what: str) -> Iterator[Problem]:
    first: dict[str, int] = {}
    for index, name in (names or {}).items():
        if name in first:
            yield Problem(f"{where}[{index}].name", f"duplicate {what} name {name!r} (also {where}[{first[name]}])")
        else:
            first[name] = index


def _known(names: dict[int, str]) -> str:
    return ", ".join(dict.fromkeys(names.values())) or "none"


def _number(table: dict[str, Any], key: str, default: float) -> float | None:
    value = table.get(key, default)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _worker_timing(worker: object) -> Iterator[Problem]:
    """A heartbeat slower than the stale limit would have running jobs taken away from live workers."""
    if not isinstance(worker, dict):
        return
    defaults = WorkerSettings()
    heartbeat = _number(worker, "heartbeat_seconds", defaults.heartbeat_seconds)
    stale = _number(worker, "stale_after_seconds", defaults.stale_after_seconds)
    if heartbeat is not None and stale is not None and 0 < stale <= heartbeat:
        yield Problem("worker.heartbeat_seconds", f"must be less than worker.stale_after_seconds ({stale:g}), "
                                                  f"got {heartbeat:g}: running jobs would be taken as stale")


def _backoff(index: int, destination: dict[str, Any]) -> Iterator[Problem]:
    """The first wait cannot be longer than the longest one."""
    first = _number(destination, "retry_backoff_seconds", DEFAULT_RETRY_BACKOFF_SECONDS)
    cap = _number(destination, "retry_max_backoff_seconds", DEFAULT_RETRY_MAX_BACKOFF_SECONDS)
    if first is not None and cap is not None and 0 < cap < first:
        yield Problem(f"destinations[{index}].retry_backoff_seconds",
                      f"must be at most retry_max_backoff_seconds ({cap:g}), got {first:g}")


def _emergency_threshold(node: object, housekeeping: object) -> Iterator[Problem]:
    """At or below the receiver's floor the clean-up would only start once C-STOREs are already refused."""
    if not isinstance(node, dict) or not isinstance(housekeeping, dict):
        return
    floor = _number(node, "min_free_disk_mb", DEFAULT_MIN_FREE_DISK_MB)
    threshold = _number(housekeeping, "emergency_free_disk_mb", HousekeepingSettings().emergency_free_disk_mb)
    if floor is not None and threshold is not None and 0 < threshold <= floor:
        yield Problem("housekeeping.emergency_free_disk_mb",
                      f"must be 0 (off) or more than node.min_free_disk_mb ({floor:g}), got {threshold:g}: "
                      f"the receiver would refuse instances before the clean-up starts")
