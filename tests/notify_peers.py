"""Real peers for the notification tests: an HTTP server that receives webhooks, an SMTP server (aiosmtpd).

Both run in threads of the test process on 127.0.0.1 and keep what they received, in order.
"""

from __future__ import annotations

import email
import hashlib
import hmac
import json
import ssl
import threading
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SmtpServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from tests.conftest import free_port


@dataclass(frozen=True)
class Hook:
    """One POST the webhook receiver answered."""

    path: str
    headers: Message  # case-insensitive, as HTTP header names are
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def signed_with(self, secret: bytes) -> bool:
        """The receiver's check, as the README shows it: HMAC-SHA256 of the raw body, compared in constant time."""
        expected = "sha256=" + hmac.new(secret, self.body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, self.headers.get("X-DicomNode-Signature", ""))


class WebhookReceiver:
    """An HTTP server on localhost keeping every POST; answers ``status`` (200 unless set)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.received: list[Hook] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                receiver.received.append(Hook(self.path, self.headers, body))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/dicom-node"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Collector:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], Message]] = []

    async def handle_DATA(self, server: SmtpServer, session: Session, envelope: Envelope) -> str:
        content = envelope.content if isinstance(envelope.content, bytes) else str(envelope.content).encode()
        self.messages.append((str(envelope.mail_from), list(envelope.rcpt_tos), email.message_from_bytes(content)))
        return "250 OK"


class SmtpReceiver:
    """An SMTP server on localhost (aiosmtpd); with ``cert`` it offers STARTTLS and requires a login."""

    def __init__(self, port: int | None = None, cert: tuple[Path, Path] | None = None,
                 login: tuple[str, str] | None = None) -> None:
        self.port = port or free_port()
        self.collector = _Collector()
        kwargs: dict[str, Any] = {}
        if cert is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(str(cert[0]), str(cert[1]))
            kwargs.update(tls_context=context, require_starttls=True)
        if login is not None:
            def check(server: SmtpServer, session: Session, envelope: Envelope, mechanism: str,
                      data: Any) -> AuthResult:
                ok = isinstance(data, LoginPassword) and (data.login.decode(), data.password.decode()) == login
                return AuthResult(success=ok)

            kwargs.update(authenticator=check, auth_required=True)
        self.controller = Controller(self.collector, hostname="127.0.0.1", port=self.port, **kwargs)
        self.controller.start()

    @property
    def messages(self) -> list[tuple[str, list[str], Message]]:
        return self.collector.messages

    def stop(self) -> None:
        self.controller.stop()
