"""The TLS listener ([node.tls]): the same Application Entity and handlers as the plain one, on its own port.

pynetdicom's server does the TLS handshake inside ``accept`` on the thread that accepts every
connection, without a timeout: one client that opens TCP and never sends its ClientHello would stop
the listener for everyone, and a failed handshake is dropped without a word. Here ``accept`` only
wraps the socket; the handshake runs on the connection's own thread, within
``handshake_timeout_seconds``, and a refused one is logged with the peer's address and the reason.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from datetime import datetime
from typing import Any, cast

from pynetdicom.transport import ThreadedAssociationServer
from pynetdicom.utils import make_target

from dicom_node.receive.ae import ListenerError, build_ae, event_handlers
from dicom_node.receive.handlers import ReceiverContext
from dicom_node.settings import NodeSettings
from dicom_node.tls import TlsError, describe_tls_error, server_context

log = logging.getLogger(__name__)


class TlsAssociationServer(ThreadedAssociationServer):
    """An association server whose TLS handshakes run on each connection's thread, with a timeout."""

    handshake_timeout: float = 10.0

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        listening = cast(socket.socket, self.socket)
        client, address = listening.accept()
        context = cast(ssl.SSLContext, self.ssl_context)
        return context.wrap_socket(client, server_side=True, do_handshake_on_connect=False), address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        tls_socket = cast(ssl.SSLSocket, request)
        try:
            tls_socket.settimeout(self.handshake_timeout)
            tls_socket.do_handshake()
            tls_socket.settimeout(None)  # as pynetdicom expects an accepted socket: blocking, read after select
        except OSError as exc:  # ssl.SSLError, a timeout, a reset
            host, port = client_address[0], client_address[1]
            log.warning("TLS connection from %s:%s refused: %s", host, port, describe_tls_error(exc))
            self.shutdown_request(request)
            return
        log.debug("TLS %s with %s:%s", tls_socket.version(), client_address[0], client_address[1])
        super().process_request_thread(request, client_address)


def start_tls_listener(node: NodeSettings, ctx: ReceiverContext) -> TlsAssociationServer:
    """Start the TLS listener on ``node.tls.port`` in background threads; stop it with ``server.shutdown()``.

    It has an Application Entity of its own (the same contexts, allow-list and timeouts), so its
    association slots are its own too."""
    tls = node.tls
    try:
        context = server_context(tls)
    except TlsError as exc:  # the files changed since the config was loaded
        raise ListenerError(f"cannot start the TLS listener: node.{exc}") from exc
    ae = build_ae(node)
    try:
        server = cast(TlsAssociationServer, ae.make_server(
            (node.host, tls.port), ssl_context=context, evt_handlers=event_handlers(ctx),
            server_class=TlsAssociationServer))
    except OSError as exc:
        raise ListenerError(f"cannot listen with TLS on {node.host}:{tls.port}: {exc.strerror or exc} "
                            "(is another process using [node.tls] port?)") from exc
    server.handshake_timeout = tls.handshake_timeout_seconds
    # as AE.start_server(block=False) does, with our server class
    name = f"AcceptorServer@{datetime.now():%Y%m%d%H%M%S}-tls"
    thread = threading.Thread(target=make_target(server.serve_forever), name=name, daemon=True)
    thread.start()
    ae._servers.append(server)  # AssociationServer.shutdown() removes it from there
    log.info("listening with TLS (at least TLS %s%s) as %s on %s:%d", tls.min_version,
             ", client certificate required" if tls.require_client_cert else "", node.ae_title, node.host, tls.port)
    return server
