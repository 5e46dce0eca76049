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

from dicom_node.receive.admission import AdmissionPolicy
from dicom_node.receive.admission_server import AdmissionServer, serve_gated
from dicom_node.receive.ae import ListenerError, build_ae, event_handlers
from dicom_node.receive.handlers import ReceiverContext
from dicom_node.settings import NodeSettings
from dicom_node.tls import TlsError, server_context

log = logging.getLogger(__name__)


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
                             policy=policy)
    except OSError as exc:
        raise ListenerError(f"cannot listen with TLS on {node.host}:{tls.port}: {exc.strerror or exc} "
                            "(is another process using [node.tls] port?)") from exc
    log.info("listening with TLS (at least TLS %s%s) as %s on %s:%d", tls.min_version,
             ", client certificate required" if tls.require_client_cert else "", node.ae_title, node.host, tls.port)
    return server
