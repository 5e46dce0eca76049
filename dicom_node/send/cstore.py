"""C-STORE SCU: send files to one destination over one association, one result per file, over TLS where
the destination's [tls] table says so.

Nothing here raises for a network fault: an association that cannot be made, or is lost, is a
failed result of each file it concerned, with the reason.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # made at import time; the stubs miss it

from dicom_node.errors import SendError
from dicom_node.settings import Destination
from dicom_node.tls import TlsError, client_context, describe_tls_error

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SendResult:
    path: Path
    ok: bool
    status: int | None
    error: str = ""


def _nodelay(event: Any) -> None:
    try:
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError):
        pass


def _ae(calling_ae: str, dest: Destination) -> AE:
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = dest.timeout_seconds
    ae.dimse_timeout = dest.timeout_seconds
    ae.network_timeout = dest.timeout_seconds
    ae.connection_timeout = dest.timeout_seconds  # the TCP connect and, with TLS, the handshake
    return ae


def _tls_args(dest: Destination) -> tuple[ssl.SSLContext, str] | None:
    """pynetdicom's ``tls_args``: the context, and the host name the certificate must name."""
    if not dest.tls.enabled:
        return None
    try:
        return client_context(dest.tls), dest.host
    except TlsError as exc:  # a file removed or replaced since the config was loaded
        raise SendError(f"{dest.name}: TLS {exc}") from exc


def _associate(ae: AE, dest: Destination) -> Any:
    return ae.associate(dest.host, dest.port, ae_title=dest.ae_title, tls_args=_tls_args(dest),
                        evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay)])


def echo(dest: Destination, calling_ae: str) -> int:
    """C-ECHO a destination; returns the status or raises SendError with the reason."""
    ae = _ae(calling_ae, dest)
    ae.add_requested_context(Verification)
    assoc = _associate(ae, dest)
    if not assoc.is_established:
        raise SendError(_why_not(assoc, dest))
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    if not status:
        raise SendError(f"{dest.name}: no answer to C-ECHO")
    return int(status.Status)


def _reachable(dest: Destination) -> str:
    """'' when a TCP connection (and the TLS handshake) succeeds, else the reason (pynetdicom reports all
    of them as 'aborted')."""
    try:
        with socket.create_connection((dest.host, dest.port), timeout=min(5.0, dest.timeout_seconds)) as sock:
            if dest.tls.enabled:
                return _handshake_problem(sock, dest)
            return ""
    except OSError as exc:
        return exc.strerror or str(exc)


def _handshake_problem(sock: socket.socket, dest: Destination) -> str:
    try:
        with client_context(dest.tls).wrap_socket(sock, server_hostname=dest.host) as tls_sock:
            # with TLS 1.3 a refused client certificate arrives as an alert after the handshake
            tls_sock.settimeout(0.5)
            try:
                return "" if tls_sock.recv(1) else "the peer closed the connection after the TLS handshake"
            except TimeoutError:  # waiting for our A-ASSOCIATE-RQ: TLS is fine
                return ""
    except TlsError as exc:
        return f"TLS {exc}"
    except OSError as exc:
        return f"TLS handshake failed: {describe_tls_error(exc)}"


def _why_not(assoc: Any, dest: Destination) -> str:
    where = f"{dest.name} ({dest.ae_title}@{dest.host}:{dest.port})"
    unreachable = _reachable(dest)
    if unreachable:
        return f"{where} cannot be reached: {unreachable}"
    if assoc.is_rejected:
        return f"{where} rejected the association (check that it knows our AE title)"
    if assoc.is_aborted:
        return f"{where} aborted the association"
    return f"{where} cannot be reached"


def send_files(dest: Destination, calling_ae: str, paths: Sequence[Path],
               progress: Callable[[int, int], None] | None = None) -> list[SendResult]:
    """Send ``paths`` in one association. Files that cannot be read fail alone, not the batch."""
    headers: list[tuple[Path, str, str]] = []
    results: list[SendResult] = []
    for path in paths:
        try:
            meta = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
            ts = str(meta.file_meta.TransferSyntaxUID)
            headers.append((path, str(meta.SOPClassUID), ts))
        except (InvalidDicomError, OSError, AttributeError) as exc:
            results.append(SendResult(path, False, None, f"cannot read file: {exc}"))
    if not headers:
        return results
    ae = _ae(calling_ae, dest)
    contexts: dict[str, set[str]] = {}
    for _, sop_class, ts in headers:
        contexts.setdefault(sop_class, {str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)}).add(ts)
    if len(contexts) > 128:
        raise SendError(f"{len(contexts)} SOP classes in one batch; at most 128 presentation contexts")
    for sop_class, syntaxes in contexts.items():
        ae.add_requested_context(sop_class, sorted(syntaxes))
    try:
        assoc = _associate(ae, dest)
    except SendError as exc:  # its TLS files cannot be loaded
        return results + [SendResult(p, False, None, str(exc)) for p, _, _ in headers]
    except (OSError, RuntimeError, ValueError) as exc:  # e.g. a host name that does not resolve
        reason = f"{dest.name} ({dest.ae_title}@{dest.host}:{dest.port}) cannot be reached: {exc}"
        return results + [SendResult(p, False, None, reason) for p, _, _ in headers]
    if not assoc.is_established:
        reason = _why_not(assoc, dest)
        return results + [SendResult(p, False, None, reason) for p, _, _ in headers]
    try:
        for n, (path, _, _) in enumerate(headers, 1):
            results.append(_send_one(assoc, path))
            if progress:
                progress(n, len(headers))
    finally:
        if assoc.is_established:
            assoc.release()
    return results


@dataclass(frozen=True)
class FileIdentity:
    """What a delivery row records of a file sent by hand."""

    modality: str
    sop_uid: str
    sop_class_uid: str


def file_identity(path: Path) -> FileIdentity | None:
    """The Modality and SOP UIDs of a DICOM file; None when it cannot be read (sending it fails alone)."""
    try:
        meta = dcmread(path, stop_before_pixels=True, specific_tags=["Modality", "SOPInstanceUID", "SOPClassUID"])
        return FileIdentity(str(meta.get("Modality", "") or "OT"), str(meta.SOPInstanceUID), str(meta.SOPClassUID))
    except (InvalidDicomError, OSError, AttributeError):
        return None


def _send_one(assoc: Any, path: Path) -> SendResult:
    if not assoc.is_established:
        return SendResult(path, False, None, "association lost before sending")
    try:
        status = assoc.send_c_store(path)
    except (ValueError, RuntimeError, OSError) as exc:
        return SendResult(path, False, None, f"{type(exc).__name__}: {exc}")
    if not status:
        return SendResult(path, False, None, "no response (timeout or connection lost)")
    code = int(status.Status)
    # 0xB000-0xBFFF are warnings: the object was stored
    ok = code == 0x0000 or 0xB000 <= code <= 0xBFFF
    return SendResult(path, ok, code, "" if ok else f"refused with status 0x{code:04X}")
