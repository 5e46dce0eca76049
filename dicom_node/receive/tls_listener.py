"""The TLS listener ([node.tls]): the same Application Entity, handlers and connection gate as the
plain one, on its own port.

pynetdicom's server does the TLS handshake inside ``accept`` on the thread that accepts every
connection, without a timeout: one client that opens TCP and never sends its ClientHello would stop
the listener for everyone, and a failed handshake is dropped without a word. Here the connection
gate (``admission``) holds a connection until its first bytes arrive, with the peer allow-list and
the per-peer cap, for at most ``handshake_timeout_seconds`` (or the negotiation timeout, if that is
shorter); the handshake then runs on the connection's own thread within the same time, and a refused
one is logged with the peer's address and the reason.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import ssl
from typing import cast

from dicom_node.db.association_audit import AuditEntry
from dicom_node.db.tables import AuditResult
from dicom_node.receive.admission import Address, AdmissionPolicy, close_quietly, peer_ip
from dicom_node.receive.admission_server import AdmissionServer, serve_gated
from dicom_node.receive.ae import ListenerError, build_ae, event_handlers
from dicom_node.receive.handlers import ReceiverContext
from dicom_node.settings import NodeSettings
from dicom_node.tls import TlsError, describe_tls_error, server_context

log = logging.getLogger(__name__)


class TlsAdmissionServer(AdmissionServer):
    """The gated server whose TLS handshakes run on each connection's thread, with a timeout, and
    whose refusals say why."""

    def _tls_handshake(self, sock: socket.socket, address: Address) -> ssl.SSLSocket | None:
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


def start_tls_listener(node: NodeSettings, ctx: ReceiverContext) -> AdmissionServer:
    """Start the TLS listener on ``node.tls.port`` in background threads; stop it with ``server.shutdown()``.

    It has an Application Entity of its own (the same contexts, allow-lists and timeouts), so its
    association slots are its own too."""
    tls = node.tls
    try:
        context = server_context(tls)
    except TlsError as exc:  # the files changed since the config was loaded
        raise ListenerError(f"cannot start the TLS listener: node.{exc}") from exc
    ae = build_ae(node)
    policy = AdmissionPolicy.from_settings(node)
    policy = dataclasses.replace(policy, negotiation_timeout=min(policy.negotiation_timeout,
                                                                 tls.handshake_timeout_seconds))
    try:
        server = serve_gated(ae, node, ctx.factory, event_handlers(ctx), ssl_context=context, port=tls.port,
                             server_class=TlsAdmissionServer, policy=policy)
    except OSError as exc:
        raise ListenerError(f"cannot listen with TLS on {node.host}:{tls.port}: {exc.strerror or exc} "
                            "(is another process using [node.tls] port?)") from exc
    log.info("listening with TLS (at least TLS %s%s) as %s on %s:%d", tls.min_version,
             ", client certificate required" if tls.require_client_cert else "", node.ae_title, node.host, tls.port)
    return server
