"""The connection gate: who may connect, how many at once, and no thread for a connection that has not negotiated.

pynetdicom starts two threads for a TCP connection as soon as it is accepted, and counts it against
``maximum_associations`` while it waits (``acse_timeout``) for an A-ASSOCIATE-RQ; its DUL thread
blocks in ``recv()`` for good on half a PDU. So 33 sockets that sent nothing locked everyone out.
Here the server's accept loop gives each new connection to the gate, which

- refuses it at once when its address is not in ``node.allowed_peers``, or when its address already
  has ``node.max_connections_per_peer`` connections open (waiting or associated);
- holds it, in one selector thread and without a thread of its own, until its whole A-ASSOCIATE-RQ
  PDU has arrived (looked at with ``MSG_PEEK``, so pynetdicom then reads it unchanged), and only
  then hands it to pynetdicom, whose association slots are thereby taken by negotiating peers only;
- drops it when ``node.negotiation_timeout_seconds`` pass first, when its first bytes are not an
  A-ASSOCIATE-RQ, or to make room when ``node.max_waiting_connections`` are waiting (the one that
  has waited longest goes: a real sender sends its request within milliseconds).

Each refusal and drop is audited (``audit_log``). With TLS the request cannot be looked at before
the handshake; the connection is handed over when its first bytes arrive, and the handshake runs
in the connection's own thread under the negotiation timeout (``admission_server``).
"""

from __future__ import annotations

import ipaddress
import logging
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dicom_node.db.association_audit import AuditEntry
from dicom_node.db.tables import AuditResult
from dicom_node.receive.audit_log import AuditLog
from dicom_node.settings import NodeSettings

log = logging.getLogger(__name__)

A_ASSOCIATE_RQ = 0x01
PDU_HEADER = 6  # type, reserved, 4-byte length
PEEK_LIMIT = 64 * 1024  # this much of a request buffered: the peer is sending, pynetdicom reads the rest
MAX_REQUEST_LENGTH = 1 << 20  # an A-ASSOCIATE-RQ proposing 128 contexts is far shorter
PARTIAL_RECHECK_SECONDS = 0.05  # a request that arrived in part is looked at again this often
STARTED_GRACE_SECONDS = 5.0  # a handed-over connection whose association has not started yet counts this long

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = tuple[Any, ...]


def peer_ip(address: Address) -> str:
    """The peer's IP address as text; an IPv4-mapped IPv6 address as its IPv4 address."""
    text = str(address[0])
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return text
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _peer_text(address: Address) -> str:
    return f"{peer_ip(address)}:{address[1]}" if len(address) > 1 else peer_ip(address)


@dataclass(frozen=True)
class AdmissionPolicy:
    allowed_peers: tuple[IPNetwork, ...]
    max_per_peer: int
    max_waiting: int
    negotiation_timeout: float

    @classmethod
    def from_settings(cls, node: NodeSettings) -> AdmissionPolicy:
        return cls(tuple(ipaddress.ip_network(n) for n in node.allowed_peers), node.max_connections_per_peer,
                   node.max_waiting_connections, node.negotiation_timeout_seconds)

    def peer_allowed(self, ip: str) -> bool:
        if not self.allowed_peers:
            return True
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address in network for network in self.allowed_peers)


def request_state(head: bytes) -> str | None:
    """What the first bytes of a connection say: None while more of the request is needed,
    ``"complete"`` when pynetdicom can read it at once, otherwise the reason to drop it."""
    if not head:
        return None
    if head[0] != A_ASSOCIATE_RQ:
        return f"not an A-ASSOCIATE-RQ (PDU type 0x{head[0]:02X})"
    if len(head) < PDU_HEADER:
        return None
    (length,) = struct.unpack(">L", head[2:PDU_HEADER])
    if length > MAX_REQUEST_LENGTH:
        return f"A-ASSOCIATE-RQ of {length} bytes is too long"
    if len(head) >= PDU_HEADER + length or len(head) >= PEEK_LIMIT:
        return "complete"
    return None


@dataclass
class _Waiting:
    sock: socket.socket
    address: Address
    ip: str
    arrived: float
    registered: bool = False
    partial: bool = False  # part of the request is buffered: looked at by timer, not by the selector


@dataclass
class _Admitted:
    ip: str
    since: float
    assoc: Any = None  # the pynetdicom Association, once its thread was made

    def alive(self, now: float) -> bool:
        if self.assoc is None:
            return now - self.since < STARTED_GRACE_SECONDS
        return bool(self.assoc.is_alive())


def close_quietly(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # the peer may have gone already
    sock.close()


class ConnectionGate:
    """Admits, holds and hands over connections; ``hand_over(sock, address)`` gives one to pynetdicom."""

    def __init__(self, policy: AdmissionPolicy, audit: AuditLog, hand_over: Callable[[socket.socket, Address], None],
                 tls: bool = False) -> None:
        self.policy = policy
        self._audit = audit
        self._hand_over = hand_over
        self._tls = tls
        self._lock = threading.Lock()
        self._waiting: dict[int, _Waiting] = {}  # id(socket) -> connection; the gate thread owns the sockets
        self._admitted: dict[Address, _Admitted] = {}
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._selector.register(self._wake_read, selectors.EVENT_READ, None)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="connection-gate", daemon=True)
        self._thread.start()

    # --- the accept thread ---------------------------------------------------------------------

    def admit(self, sock: socket.socket, address: Address) -> None:
        """Refuse the connection now, or give it to the gate thread to wait for its request."""
        ip = peer_ip(address)
        if not self.policy.peer_allowed(ip):
            self._end(sock, address, AuditResult.REFUSED, "peer address not allowed")
            return
        with self._lock:
            room = self._open_from(ip, time.monotonic()) < self.policy.max_per_peer
            if room:  # from here on the gate thread owns the socket
                self._waiting[id(sock)] = _Waiting(sock, address, ip, time.monotonic())
        if room:
            self._wake()
        else:
            self._end(sock, address, AuditResult.REFUSED,
                      f"too many connections from {ip} (max_connections_per_peer {self.policy.max_per_peer})")

    def _open_from(self, ip: str, now: float) -> int:
        for address in [a for a, admitted in self._admitted.items() if not admitted.alive(now)]:
            del self._admitted[address]
        return sum(1 for w in self._waiting.values() if w.ip == ip) + \
            sum(1 for a in self._admitted.values() if a.ip == ip)

    def started(self, address: Address, assoc: Any) -> None:
        """The connection's pynetdicom Association exists (it counts for its peer while it lives)."""
        with self._lock:
            admitted = self._admitted.get(address)
            if admitted is not None:
                admitted.assoc = assoc

    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)

    def close(self) -> None:
        self._stopping = True
        self._wake()
        self._thread.join(10)
        with self._lock:
            leftover, self._waiting = list(self._waiting.values()), {}
        for w in leftover:
            close_quietly(w.sock)
        self._selector.close()
        self._wake_read.close()
        self._wake_write.close()

    def _wake(self) -> None:
        try:
            self._wake_write.send(b"\0")
        except OSError:
            pass  # closed while stopping, or the wake-up buffer is full: the thread wakes either way

    def _end(self, sock: socket.socket, address: Address, result: AuditResult, reason: str) -> None:
        close_quietly(sock)
        self._audit.add(AuditEntry(_peer_text(address), result, reason))

    # --- the gate thread -----------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping:
            try:
                self._pass()
            except Exception:  # the gate must outlive any one connection's surprise
                log.exception("connection gate: unexpected failure; going on")
                time.sleep(0.1)

    def _pass(self) -> None:
        with self._lock:
            waiting = list(self._waiting.values())
        now = time.monotonic()
        timeout = min([w.arrived + self.policy.negotiation_timeout - now for w in waiting] + [1.0])
        if any(w.partial for w in waiting):
            timeout = min(timeout, PARTIAL_RECHECK_SECONDS)
        for key, _ in self._selector.select(max(timeout, 0.0)):
            if key.data is None:
                self._drain_wake()
            else:
                self._look(key.data)
        with self._lock:
            waiting = sorted(self._waiting.values(), key=lambda w: w.arrived)
        for w in waiting:
            if not w.registered:
                self._register(w)
            elif w.partial:
                self._look(w)
        now = time.monotonic()
        with self._lock:
            waiting = sorted(self._waiting.values(), key=lambda w: w.arrived)
        for w in waiting:
            if now - w.arrived >= self.policy.negotiation_timeout:
                self._drop(w, f"negotiation timeout ({self.policy.negotiation_timeout:g} s without an A-ASSOCIATE-RQ)")
        excess = len(waiting) - self.policy.max_waiting
        for w in [w for w in waiting if id(w.sock) in self._waiting][:max(excess, 0)]:
            self._drop(w, f"waiting room full (max_waiting_connections {self.policy.max_waiting}); "
                          "dropped the connection waiting longest")

    def _drain_wake(self) -> None:
        try:
            while self._wake_read.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _register(self, w: _Waiting) -> None:
        w.registered = True
        try:
            w.sock.setblocking(False)
            self._selector.register(w.sock, selectors.EVENT_READ, w)
        except (OSError, ValueError):
            self._forget(w)
            close_quietly(w.sock)

    def _look(self, w: _Waiting) -> None:
        if id(w.sock) not in self._waiting:
            return
        try:
            head = w.sock.recv(PEEK_LIMIT, socket.MSG_PEEK)
        except BlockingIOError:
            return
        except OSError:
            head = b""
        if not head:  # closed by the peer before it sent anything: a port check, nothing to audit
            self._forget(w)
            close_quietly(w.sock)
            return
        state = "complete" if self._tls else request_state(head)
        if state is None:
            if not w.partial:
                w.partial = True
                self._unregister(w)
        elif state == "complete":
            self._give(w)
        else:
            self._drop(w, state)

    def _give(self, w: _Waiting) -> None:
        self._forget(w)
        with self._lock:
            self._admitted[w.address] = _Admitted(w.ip, time.monotonic())
        try:
            w.sock.setblocking(True)
            self._hand_over(w.sock, w.address)
        except Exception:
            log.exception("could not hand a connection from %s over", _peer_text(w.address))
            with self._lock:
                self._admitted.pop(w.address, None)
            close_quietly(w.sock)

    def _drop(self, w: _Waiting, reason: str) -> None:
        self._forget(w)
        self._end(w.sock, w.address, AuditResult.DROPPED, reason)

    def _forget(self, w: _Waiting) -> None:
        self._unregister(w)
        with self._lock:
            self._waiting.pop(id(w.sock), None)

    def _unregister(self, w: _Waiting) -> None:
        try:
            self._selector.unregister(w.sock)
        except (KeyError, ValueError, OSError):
            pass  # not registered (partial, or never was)
