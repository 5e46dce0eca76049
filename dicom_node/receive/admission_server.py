"""pynetdicom's threaded association server with the connection gate in front of it.

The accept loop gives every new connection to :class:`~dicom_node.receive.admission.ConnectionGate`
instead of starting an association for it; the gate hands it back (``hand_over``) once its
A-ASSOCIATE-RQ has arrived, and only then does pynetdicom make its threads. The TLS handshake, which
pynetdicom does inside the accept loop (one silent TLS client would stop every other connection),
runs here in the connection's own thread, bounded by the negotiation timeout.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from datetime import datetime
from socketserver import ThreadingMixIn
from typing import Any, cast

from pynetdicom import AE, evt
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db.association_audit import AuditEntry
from dicom_node.db.tables import AuditResult
from dicom_node.receive.admission import Address, AdmissionPolicy, ConnectionGate, close_quietly, peer_ip
from dicom_node.receive.audit_log import AssociationAuditor, AuditLog
from dicom_node.settings import NodeSettings
from dicom_node.tls import describe_tls_error

log = logging.getLogger(__name__)


class _GatedRequestHandler(RequestHandler):
    """pynetdicom's handler, telling the gate which Association now serves the connection."""

    def handle(self) -> None:
        assoc = self._create_association()
        cast(AdmissionServer, self.server).gate.started(self.client_address, assoc)
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        assoc.start()


class AdmissionServer(ThreadedAssociationServer):
    daemon_threads = True  # a connection thread never keeps the process alive
    # socketserver listens with a backlog of 5: beyond it the kernel drops the handshake's last
    # step and the peer waits for retransmissions (seconds) before its connection is even accepted
    request_queue_size = 1024

    def __init__(self, ae: AE, address: tuple[str, int], ae_title: str, contexts: list[Any],
                 ssl_context: ssl.SSLContext | None = None, evt_handlers: list[Any] | None = None, *,
                 policy: AdmissionPolicy, audit_log: AuditLog) -> None:
        super().__init__(ae, address, ae_title, contexts, ssl_context, evt_handlers,
                         request_handler=_GatedRequestHandler)
        self.audit_log = audit_log
        self.gate = ConnectionGate(policy, audit_log, self._hand_over, tls=ssl_context is not None)
        auditor = AssociationAuditor(audit_log)
        self.bind(evt.EVT_ACCEPTED, auditor.audit_accepted)
        self.bind(evt.EVT_REJECTED, auditor.audit_rejected)
        self.bind(evt.EVT_CONN_CLOSE, auditor.audit_closed)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept only; TLS is wrapped in the connection's thread (``process_request_thread``)."""
        listening = cast(socket.socket, self.socket)
        client, address = listening.accept()
        return client, address

    def process_request(self, request: Any, client_address: Any) -> None:
        self.gate.admit(request, client_address)

    def _hand_over(self, sock: socket.socket, address: Address) -> None:
        # a recv() that waits on a peer gone silent mid-PDU ends after the network timeout
        # instead of holding pynetdicom's thread for ever
        sock.settimeout(self.ae.network_timeout)
        ThreadingMixIn.process_request(self, sock, address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        if self.ssl_context is not None:
            request = self._tls_handshake(request, client_address)
            if request is None:
                return
        super().process_request_thread(request, client_address)

    def _tls_handshake(self, sock: socket.socket, address: Address) -> ssl.SSLSocket | None:
        """The TLS handshake on the connection's own thread, within the negotiation timeout; a refused
        one is logged with the peer's address and the reason, and audited."""
        context = cast(ssl.SSLContext, self.ssl_context)
        timeout = sock.gettimeout()
        sock.settimeout(self.gate.policy.negotiation_timeout)
        try:
            wrapped = context.wrap_socket(sock, server_side=True)
        except OSError as exc:  # ssl.SSLError, a timeout, a reset
            reason = "no TLS handshake in time" if isinstance(exc, TimeoutError) else describe_tls_error(exc)
            log.warning("TLS connection from %s:%s refused: %s", peer_ip(address), address[1], reason)
            close_quietly(sock)
            self.audit_log.add(AuditEntry(f"{peer_ip(address)}:{address[1]}", AuditResult.DROPPED,
                                          f"TLS handshake failed: {reason}"[:200]))
            return None
        log.debug("TLS %s with %s:%s", wrapped.version(), peer_ip(address), address[1])
        wrapped.settimeout(timeout)
        return wrapped

    def shutdown(self) -> None:
        super().shutdown()
        self.gate.close()
        self.audit_log.close()


def serve_gated(ae: AE, node: NodeSettings, factory: sessionmaker[Session], handlers: list[Any],
                ssl_context: ssl.SSLContext | None = None, port: int | None = None,
                policy: AdmissionPolicy | None = None) -> AdmissionServer:
    """Bind ``port`` (``node.port`` by default) and serve in a background thread, as
    ``AE.start_server(block=False)`` does; raises OSError when the address cannot be bound. The
    caller stops it with ``server.shutdown()``."""
    audit_log = AuditLog(factory)
    try:
        server = cast(AdmissionServer, ae.make_server(
            (node.host, node.port if port is None else port), ssl_context=ssl_context, evt_handlers=handlers,
            server_class=AdmissionServer, policy=policy or AdmissionPolicy.from_settings(node),
            audit_log=audit_log))
    except BaseException:
        audit_log.close()
        raise
    stamp = datetime.now().strftime("%Y%m%d%H%M%S")
    threading.Thread(target=server.serve_forever, name=f"AcceptorServer@{stamp}", daemon=True).start()
    ae._servers.append(server)  # as start_server does: AE.shutdown() stops it too
    return server
