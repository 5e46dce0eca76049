"""The association audit, off the answer's path: entries go to a queue, one thread writes them in batches.

``audit_accepted``, ``audit_rejected`` and ``audit_closed`` are the pynetdicom handlers that feed it
(the connection gate adds the connections it refuses or drops). Every entry that is not an
accepted association is also one warning line: AE titles, address and reason, never patient data.
"""

from __future__ import annotations

import logging
import queue
import threading
import weakref
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db import association_audit as audit
from dicom_node.db.association_audit import AuditEntry
from dicom_node.db.tables import AuditResult
from dicom_node.errors import IndexError_

log = logging.getLogger(__name__)

MAX_BATCH = 256
MAX_QUEUED = 10_000  # a flood of refused connections must not grow the listener's memory without bound

# (result, source, diagnostic) of an A-ASSOCIATE-RJ (PS3.8 9.3.4) -> the reason recorded
REJECT_REASONS = {
    (0x01, 0x01, 0x03): "calling AE not allowed",
    (0x01, 0x01, 0x07): "called AE not recognised",
    (0x02, 0x03, 0x02): "too many associations (node.max_associations)",
    (0x02, 0x02, 0x01): "user identity not accepted",
}


class AuditLog:
    """Queues audit entries and writes them from a thread of its own."""

    def __init__(self, factory: sessionmaker[Session]) -> None:
        self._factory = factory
        self._queue: queue.Queue[AuditEntry | None] = queue.Queue(MAX_QUEUED)
        self._lost = 0
        self._thread = threading.Thread(target=self._run, name="association-audit", daemon=True)
        self._thread.start()

    def add(self, entry: AuditEntry) -> None:
        """Never blocks and never raises: auditing must not slow or break an answer."""
        if entry.result != AuditResult.ACCEPTED:
            log.warning("%s %s from %s (calling AE %r, called AE %r): %s",
                        "connection" if entry.result in (AuditResult.REFUSED, AuditResult.DROPPED) else "association",
                        entry.result.value, entry.peer_address, entry.calling_ae, entry.called_ae, entry.reason)
        try:
            self._queue.put_nowait(entry)
        except queue.Full:
            self._lost += 1
            if self._lost == 1 or self._lost % 1000 == 0:
                log.error("association audit queue full: %d entries not recorded", self._lost)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the thread."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            batch: list[AuditEntry] = [] if first is None else [first]
            stopping = first is None
            while not stopping and len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                else:
                    batch.append(item)
            try:
                audit.record(self._factory, batch)
            except IndexError_ as exc:
                log.error("association audit: %s", exc)
            except Exception:  # the thread must outlive any one batch
                log.exception("association audit: unexpected failure writing %d row(s)", len(batch))


def _peer(assoc: Any) -> str:
    try:
        return f"{assoc.requestor.address}:{assoc.requestor.port}"
    except AttributeError:
        return "?"


def _titles(assoc: Any) -> tuple[str, str]:
    try:
        request = assoc.requestor.primitive
        return str(request.calling_ae_title or ""), str(request.called_ae_title or "")
    except AttributeError:
        return "", ""


class AssociationAuditor:
    """The pynetdicom handlers of the audit; remembers which associations it recorded, so that a
    connection that closes during negotiation without either outcome is recorded as dropped."""

    def __init__(self, log_: AuditLog) -> None:
        self.audit_log = log_
        self._lock = threading.Lock()
        self._decided: weakref.WeakSet[Any] = weakref.WeakSet()  # an ended association's entry goes with it

    def _decide(self, assoc: Any, result: AuditResult, reason: str) -> None:
        with self._lock:
            self._decided.add(assoc)
        calling, called = _titles(assoc)
        self.audit_log.add(AuditEntry(_peer(assoc), result, reason, calling, called))

    def audit_accepted(self, event: Any) -> None:
        try:
            self._decide(event.assoc, AuditResult.ACCEPTED, "")
        except Exception:  # a handler must never raise into pynetdicom
            log.exception("could not audit an accepted association")

    def audit_rejected(self, event: Any) -> None:
        try:
            answer = event.assoc.acceptor.primitive
            key = (answer.result, answer.result_source, answer.diagnostic)
            result, source, diagnostic = key
            reason = REJECT_REASONS.get(
                key, f"rejected (result 0x{result:02X}, source 0x{source:02X}, reason 0x{diagnostic:02X})")
            self._decide(event.assoc, AuditResult.REJECTED, reason)
        except Exception:
            log.exception("could not audit a rejected association")

    def audit_closed(self, event: Any) -> None:
        try:
            with self._lock:
                decided = event.assoc in self._decided
                self._decided.add(event.assoc)  # pynetdicom may report one close more than once
            if not decided:  # read by pynetdicom, but neither accepted nor rejected (aborted, bad PDU)
                calling, called = _titles(event.assoc)
                self.audit_log.add(AuditEntry(_peer(event.assoc), AuditResult.DROPPED,
                                              "closed during negotiation", calling, called))
        except Exception:
            log.exception("could not audit a closed connection")
