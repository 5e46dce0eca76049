"""The listening Application Entity: presentation contexts, calling-AE allow-list, timeouts; the
connection gate (peer allow-list, caps, negotiation timeout) is in ``admission``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # made at import time; the stubs miss it

from dicom_node.errors import DicomNodeError
from dicom_node.receive.admission_server import AdmissionServer, serve_gated
from dicom_node.receive.handlers import (
    ACCEPTED_SOP_CLASSES,
    ReceiverContext,
    handle_aborted,
    handle_accepted,
    handle_conn_open,
    handle_echo,
    handle_released,
    handle_store,
)
from dicom_node.settings import NodeSettings

log = logging.getLogger(__name__)

# (event, handler) or (event, handler, arguments bound to the handler), as pynetdicom takes them
EventHandler = tuple[evt.NotificationEvent | evt.InterventionEvent, Callable[..., Any]] | tuple[
    evt.NotificationEvent | evt.InterventionEvent, Callable[..., Any], list[Any]]


class ListenerError(DicomNodeError):
    """The listening socket could not be opened."""


def build_ae(node: NodeSettings) -> AE:
    ae = AE(ae_title=node.ae_title)
    # Every transfer syntax is accepted for CT so that compressed studies are never refused at the
    # door; decoding happens when the volume is built and a failure is recorded on the job.
    for sop_class in ACCEPTED_SOP_CLASSES:
        ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    ae.maximum_pdu_size = node.max_pdu
    ae.require_called_aet = True
    if node.allowed_calling_aes:
        ae.require_calling_aet = list(node.allowed_calling_aes)
    # the gate hands a connection over once its A-ASSOCIATE-RQ has arrived; this bounds the rest
    ae.acse_timeout = node.negotiation_timeout_seconds
    ae.dimse_timeout = 60
    ae.network_timeout = 120
    ae.maximum_associations = node.max_associations  # counts negotiating and negotiated peers only
    return ae


def event_handlers(ctx: ReceiverContext) -> list[EventHandler]:
    """The handlers of every listener, plain or TLS, bound to the receiver's context."""
    return [
        (evt.EVT_CONN_OPEN, handle_conn_open, [ctx]),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, handle_store, [ctx]),
        (evt.EVT_ACCEPTED, handle_accepted, [ctx]),
        (evt.EVT_RELEASED, handle_released, [ctx]),
        (evt.EVT_ABORTED, handle_aborted, [ctx]),
        (evt.EVT_CONN_CLOSE, handle_aborted, [ctx]),
    ]


def start_listener(node: NodeSettings, ctx: ReceiverContext) -> AdmissionServer:
    """Start serving without TLS in background threads; the caller stops it with ``server.shutdown()``.

    The TLS listener (``[node.tls]``) is :func:`dicom_node.receive.tls_listener.start_tls_listener`."""
    ae = build_ae(node)
    try:
        server = serve_gated(ae, node, ctx.factory, event_handlers(ctx))
    except OSError as exc:  # the port is taken, or the address is not this host's
        raise ListenerError(f"cannot listen on {node.host}:{node.port}: {exc.strerror or exc} "
                            "(is another process using [node] port?)") from exc
    log.info("listening as %s on %s:%d", node.ae_title, node.host, node.port)
    return server
