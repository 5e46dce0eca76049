"""DICOM TLS: the SSL contexts of the listener and of each destination, and what a failed handshake means.

The contexts are built from the ``[node.tls]`` and ``[destinations.tls]`` tables (see
:mod:`dicom_node.settings.tls`) when the config is loaded, so that a missing or unreadable file is a
config error with its TOML path, and again where they are used (the files may change in between: a
renewed certificate is taken up by the next association). Nothing below TLS 1.2 is offered.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

from dicom_node.errors import DicomNodeError

if TYPE_CHECKING:
    from dicom_node.settings.tls import DestinationTls, ListenerTls

TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}

# OpenSSL's reason codes as a person reads them (the peer is the other side of the handshake)
_REASONS = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "the peer sent no client certificate, and one is required",
    "CERTIFICATE_VERIFY_FAILED": "the peer's certificate was not accepted",
    "TLSV1_ALERT_UNKNOWN_CA": "the peer does not trust our certificate (unknown CA)",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the peer refused our certificate",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the peer refused our certificate",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the peer requires a client certificate and we sent none",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "no TLS version or cipher in common with the peer",
    "UNSUPPORTED_PROTOCOL": "the peer's TLS version is below the minimum",
    "TLSV1_ALERT_PROTOCOL_VERSION": "no TLS version in common with the peer",
    "WRONG_VERSION_NUMBER": "the peer does not speak TLS (plain DICOM on a TLS port?)",
    "HTTP_REQUEST": "the peer does not speak TLS (plain DICOM on a TLS port?)",
    "UNKNOWN_PROTOCOL": "the peer does not speak TLS (plain DICOM on a TLS port?)",
    "RECORD_LAYER_FAILURE": "the peer does not speak TLS (plain DICOM on a TLS port?)",
}


class TlsError(DicomNodeError):
    """A TLS file of the config cannot be used; ``key`` is its key in the [tls] table."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"tls.{key}: {reason}")
        self.key = key
        self.reason = reason


def describe_tls_error(exc: BaseException) -> str:
    """Why a handshake failed, in words; OpenSSL's reason code in brackets for searching."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"the peer's certificate was not accepted: {exc.verify_message} [CERTIFICATE_VERIFY_FAILED]"
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError | ConnectionError):
        return "the peer closed the connection during the TLS handshake"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        words = _REASONS.get(exc.reason)
        return f"{words} [{exc.reason}]" if words else f"TLS error [{exc.reason}]"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "no TLS handshake in time"
    return f"{type(exc).__name__}: {exc}"


def server_context(tls: ListenerTls) -> ssl.SSLContext:
    """The listener's context: our certificate; the peers' verified against ``ca_file`` when given."""
    if tls.cert_file is None or tls.key_file is None:
        raise TlsError("cert_file" if tls.cert_file is None else "key_file", "required when TLS is enabled")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = TLS_VERSIONS[tls.min_version]
    _load_chain(context, tls.cert_file, tls.key_file)
    if tls.ca_file is not None:
        _load_ca(context, tls.ca_file)
    if tls.require_client_cert:
        if tls.ca_file is None:
            raise TlsError("ca_file", "required with require_client_cert = true (the CA the client certificates "
                                      "are signed by)")
        context.verify_mode = ssl.CERT_REQUIRED
    else:  # a client certificate that is sent is still checked
        context.verify_mode = ssl.CERT_OPTIONAL if tls.ca_file is not None else ssl.CERT_NONE
    return context


def client_context(tls: DestinationTls) -> ssl.SSLContext:
    """A destination's context: its certificate is always verified (``ca_file``, else the system's CAs)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname by default
    context.minimum_version = TLS_VERSIONS[tls.min_version]
    if tls.ca_file is not None:
        _load_ca(context, tls.ca_file)
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    context.check_hostname = tls.check_hostname
    if (tls.cert_file is None) != (tls.key_file is None):
        raise TlsError("key_file" if tls.key_file is None else "cert_file",
                       "cert_file and key_file go together (our client certificate and its key)")
    if tls.cert_file is not None and tls.key_file is not None:
        _load_chain(context, tls.cert_file, tls.key_file)
    return context


def _readable(key: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsError(key, f"cannot read {path}: {exc.strerror or exc}") from exc


def _load_ca(context: ssl.SSLContext, path: Path) -> None:
    _readable("ca_file", path)
    try:
        context.load_verify_locations(cafile=str(path))
    except ssl.SSLError as exc:
        raise TlsError("ca_file", f"{path} holds no PEM certificate ({exc.reason or exc})") from exc


def _load_chain(context: ssl.SSLContext, cert: Path, key: Path) -> None:
    _readable("cert_file", cert)
    try:  # a certificate file that parses as a CA list is a certificate; the key is checked next
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=str(cert))
    except ssl.SSLError as exc:
        raise TlsError("cert_file", f"{cert} holds no PEM certificate ({exc.reason or exc})") from exc
    if b"ENCRYPTED" in _readable("key_file", key):
        raise TlsError("key_file", f"{key} is protected by a passphrase; the node needs an unencrypted key "
                                   "(readable by its user only)")
    try:
        # no passphrase: OpenSSL would otherwise ask for one on the terminal
        context.load_cert_chain(certfile=str(cert), keyfile=str(key), password="")
    except ssl.SSLError as exc:
        raise TlsError("key_file", f"{key} is not the private key of {cert.name} "
                                   f"({exc.reason or exc})") from exc
