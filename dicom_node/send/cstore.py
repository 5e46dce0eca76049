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
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # made at import time; the stubs miss it

from dicom_node.errors import SendError
from dicom_node.send.seg_encoding import StoredFile, chosen_syntax, encoded, sent_syntax, stored_file, syntax_name
from dicom_node.settings import Destination
from dicom_node.tls import TlsError, client_context, describe_tls_error

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SendResult:
    path: Path
    ok: bool
    status: int | None
    error: str = ""
    transfer_syntax: str = ""  # keyword of the syntax it was stored in at the peer ('' when not sent)


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
    """Send ``paths`` in one association. Files that cannot be read fail alone, not the batch.

    SEGs go in the first of the destination's ``seg_transfer_syntaxes`` the peer accepts, else
    uncompressed (:mod:`dicom_node.send.seg_encoding`); each result names the syntax used.
    """
    items: list[StoredFile] = []
    results: list[SendResult] = []
    for path in paths:
        try:
            meta = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID", "SegmentationType"])
            items.append(stored_file(path, meta, dest.seg_transfer_syntaxes))
        except (InvalidDicomError, OSError, AttributeError) as exc:
            results.append(SendResult(path, False, None, f"cannot read file: {exc}"))
    if not items:
        return results
    ae = _ae(calling_ae, dest)
    try:
        for sop_class, syntaxes in _contexts(items):
            ae.add_requested_context(sop_class, syntaxes)
    except ValueError as exc:  # pynetdicom's limit of 128 presentation contexts
        raise SendError(f"{dest.name}: too many presentation contexts for one batch: {exc}") from exc
    try:
        assoc = _associate(ae, dest)
    except SendError as exc:  # its TLS files cannot be loaded
        return results + [SendResult(i.path, False, None, str(exc)) for i in items]
    except (OSError, RuntimeError, ValueError) as exc:  # e.g. a host name that does not resolve
        reason = f"{dest.name} ({dest.ae_title}@{dest.host}:{dest.port}) cannot be reached: {exc}"
        return results + [SendResult(i.path, False, None, reason) for i in items]
    if not assoc.is_established:
        reason = _why_not(assoc, dest)
        return results + [SendResult(i.path, False, None, reason) for i in items]
    try:
        for n, item in enumerate(items, 1):
            results.append(_send_item(assoc, item, dest.name))
            if progress:
                progress(n, len(items))
    finally:
        if assoc.is_established:
            assoc.release()
    return results


def _contexts(items: Sequence[StoredFile]) -> list[tuple[str, list[str]]]:
    """One context per SOP class with its stored and the uncompressed syntaxes, and one more per
    syntax a SEG is encoded in anew (the peer accepts or rejects each on its own)."""
    plain: dict[str, dict[str, None]] = {}  # in order: the stored syntax first (no conversion where accepted)
    recoded: dict[tuple[str, str], None] = {}
    for item in items:
        plain.setdefault(item.sop_class, {}).update(dict.fromkeys(u for u in item.proposals if u not in item.recoded))
        recoded.update(dict.fromkeys((item.sop_class, uid) for uid in item.recoded))
    contexts = [(sop_class, [uid]) for sop_class, uid in recoded]
    contexts += [(sop_class, list(syntaxes)) for sop_class, syntaxes in plain.items()]
    if len(contexts) > 128:
        raise SendError(f"{len(contexts)} presentation contexts in one batch (SOP classes and SEG transfer "
                        "syntaxes); at most 128")
    return contexts


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


def _send_item(assoc: Any, item: StoredFile, dest_name: str) -> SendResult:
    uid = chosen_syntax(assoc, item) if assoc.is_established else ""
    as_stored = sent_syntax(assoc, item) if assoc.is_established else ""
    if uid:
        try:
            return _send_one(assoc, item.path, encoded(item.path, uid), syntax_name(uid))
        except SendError as exc:  # sent as stored (uncompressed) instead where the peer takes that
            if not as_stored:
                return SendResult(item.path, False, None, f"{exc}; the peer accepts it in no other syntax")
            log.warning("%s: %s; sending it as stored", dest_name, exc)
    return _send_one(assoc, item.path, item.path, syntax_name(as_stored or item.stored_syntax))


def _send_one(assoc: Any, path: Path, dataset: Path | Dataset, syntax: str) -> SendResult:
    if not assoc.is_established:
        return SendResult(path, False, None, "association lost before sending")
    try:
        status = assoc.send_c_store(dataset)
    except (ValueError, RuntimeError, OSError) as exc:
        return SendResult(path, False, None, f"{type(exc).__name__}: {exc}")
    if not status:
        return SendResult(path, False, None, "no response (timeout or connection lost)")
    code = int(status.Status)
    # 0xB000-0xBFFF are warnings: the object was stored
    ok = code == 0x0000 or 0xB000 <= code <= 0xBFFF
    return SendResult(path, ok, code, "" if ok else f"refused with status 0x{code:04X}", syntax if ok else "")
