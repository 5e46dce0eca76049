"""[node.tls] and [destinations.tls]: DICOM TLS for the listener and for each destination.

Both tables have the same shape (enabled, our certificate and key, the CA that signs the peer's
certificate, the lowest TLS version) and one key of their own each: the listener may require a client
certificate, a destination checks the peer's host name. The TLS listener has a port of its own
(2762, the port DICOM assigns to TLS), so the plain port can stay open beside it or be closed.

:func:`tls_problems` loads every enabled table's files when the config is loaded, so an unreadable
file, a key that does not fit its certificate or a missing CA is a config error with its TOML path
(``node.tls.key_file: ...``), reported with the others and by ``check-config``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ConfigDict, Field, StrictBool, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass

from dicom_node.settings.problems import Problem
from dicom_node.settings.values import OptionalConfigPath, Port, Seconds, TlsVersion
from dicom_node.tls import TlsError, client_context, server_context

TABLE = ConfigDict(extra="forbid")
DEFAULT_PORT = 11112  # [node] port
DEFAULT_TLS_PORT = 2762  # the port IANA assigns to DICOM over TLS ("dicom-tls")


@dataclass(frozen=True, config=TABLE)
class ListenerTls:
    """[node.tls]: a TLS listener on a port of its own, optionally requiring client certificates."""

    enabled: StrictBool = Field(default=False, description="listen with TLS on tls.port")
    cert_file: OptionalConfigPath = Field(default=None, description="our certificate (PEM), chain after it")
    key_file: OptionalConfigPath = Field(default=None, description="its private key (PEM, no passphrase)")
    ca_file: OptionalConfigPath = Field(default=None, description="CA certificates (PEM) client certificates "
                                                                  "are verified against")
    min_version: TlsVersion = Field(default="1.2", description="lowest TLS version accepted: 1.2 or 1.3")
    require_client_cert: StrictBool = Field(
        default=False, description="refuse a client without a certificate signed by ca_file")
    port: Port = Field(default=DEFAULT_TLS_PORT, description="TCP port of the TLS listener")
    plain_listener: StrictBool = Field(
        default=True, description="also listen without TLS on [node] port; false: TLS only")
    handshake_timeout_seconds: Seconds = Field(
        default=10.0, description="a connection without a finished TLS handshake this long is closed")


@dataclass(frozen=True, config=TABLE)
class DestinationTls:
    """[destinations.tls]: send with TLS; the destination's certificate is always verified."""

    enabled: StrictBool = Field(default=False, description="connect with TLS (port is the destination's TLS port)")
    cert_file: OptionalConfigPath = Field(default=None, description="our client certificate (PEM), if the "
                                                                  "destination asks for one")
    key_file: OptionalConfigPath = Field(default=None, description="its private key (PEM, no passphrase)")
    ca_file: OptionalConfigPath = Field(
        default=None, description="CA certificates (PEM) the destination's certificate is verified against; "
                                  "empty: the system's")
    min_version: TlsVersion = Field(default="1.2", description="lowest TLS version offered: 1.2 or 1.3")
    check_hostname: StrictBool = Field(
        default=True, description="the certificate must name host (DNS name or IP address)")


_T = TypeVar("_T")


def tls_problems(data: dict[str, Any], base: Path) -> list[Problem]:
    """Every TLS problem of a parsed TOML document: files that cannot be loaded, a listener without a port."""
    problems: list[Problem] = []
    node = data.get("node")
    raw = node.get("tls") if isinstance(node, dict) else None
    listener = _table(ListenerTls, raw, base)
    if listener is not None and isinstance(node, dict):
        if listener.enabled:
            problems.extend(_context_problems("node.tls", server_context, listener))
            port = node.get("port", DEFAULT_PORT)
            if listener.plain_listener and port == listener.port:
                problems.append(Problem("node.tls.port", f"is [node] port too ({port}): the plain and the TLS "
                                                         "listener need a port each (or plain_listener = false)"))
        elif not listener.plain_listener:
            problems.append(Problem("node.tls.plain_listener", "false needs enabled = true: the node would not "
                                                               "listen at all"))
    destinations = data.get("destinations")
    for index, table in enumerate(destinations if isinstance(destinations, list) else []):
        sender = _table(DestinationTls, table.get("tls") if isinstance(table, dict) else None, base)
        if sender is not None and sender.enabled:
            problems.extend(_context_problems(f"destinations[{index}].tls", client_context, sender))
    return problems


def _table(kind: type[_T], raw: object, base: Path) -> _T | None:
    """The table validated on its own; None when absent or invalid (the document's errors say why)."""
    if not isinstance(raw, dict):
        return None
    try:
        return TypeAdapter(kind).validate_python(raw, context={"base": base})
    except ValidationError:
        return None


def _context_problems(where: str, build: Callable[[_T], object], table: _T) -> list[Problem]:
    try:
        build(table)
    except TlsError as exc:
        return [Problem(f"{where}.{exc.key}", exc.reason)]
    return []
