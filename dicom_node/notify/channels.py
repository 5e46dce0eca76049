"""Sending one message: a webhook POST of signed JSON, or an e-mail through the configured SMTP server.

A webhook receives ``Content-Type: application/json`` and ``X-DicomNode-Signature: sha256=<hex>``, the
HMAC-SHA256 of the exact body bytes with the webhook's secret; ``X-DicomNode-Event`` names the event and
``X-DicomNode-Message`` the message id (the same on every retry of it: a receiver can drop repeats). Any
answer but 2xx is a failure, retried; redirects are not followed and no proxy is used. Secrets and the
SMTP password are read from their files at each send, so replacing a file takes effect without a restart.
Every failure is a :class:`NotificationError`.
"""

from __future__ import annotations

import hashlib
import hmac
import smtplib
import ssl
import urllib.error
import urllib.request
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from dicom_node import __version__
from dicom_node.errors import DicomNodeError
from dicom_node.settings import EmailSettings, Webhook

SIGNATURE_HEADER = "X-DicomNode-Signature"
EVENT_HEADER = "X-DicomNode-Event"
MESSAGE_HEADER = "X-DicomNode-Message"


class NotificationError(DicomNodeError):
    """A notification could not be sent (peer down, refused, misconfigured); the message says why."""


def signature(secret: bytes, body: bytes) -> str:
    """The X-DicomNode-Signature value of a body: sha256=<hex HMAC-SHA256>."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def _read_secret(hook: Webhook) -> bytes:
    if hook.secret_file is None:
        return hook.secret.encode("utf-8")
    try:
        return hook.secret_file.read_text(encoding="utf-8").strip().encode("utf-8")
    except OSError as exc:
        raise NotificationError(f"webhook {hook.name}: cannot read its secret_file: {exc.strerror}") from exc


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is a failure: following it would drop the body (urllib re-sends a POST as a GET)."""

    def redirect_request(self, *_args: object, **_kwargs: object) -> None:
        return None


# no proxy from the environment (the node reads its environment in the CLI only) and no redirects
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirects())


def post_webhook(hook: Webhook, body: str, kind: str, message_id: int) -> None:
    data = body.encode("utf-8")
    request = urllib.request.Request(hook.url, data=data, method="POST", headers={
        "Content-Type": "application/json", "User-Agent": f"dicom-node/{__version__}",
        SIGNATURE_HEADER: signature(_read_secret(hook), data), EVENT_HEADER: kind, MESSAGE_HEADER: str(message_id)})
    try:
        with _OPENER.open(request, timeout=hook.timeout_seconds) as answer:
            status = answer.status
    except urllib.error.HTTPError as exc:
        raise NotificationError(f"webhook {hook.name} answered HTTP {exc.code}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise NotificationError(f"webhook {hook.name}: {type(exc).__name__}: {reason}") from exc
    if not 200 <= status < 300:
        raise NotificationError(f"webhook {hook.name} answered HTTP {status}")


def _password(email: EmailSettings) -> str:
    if email.password_file is None:
        return ""
    try:
        return email.password_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise NotificationError(f"cannot read notifications.email.password_file: {exc.strerror}") from exc


def _context(email: EmailSettings) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=str(email.ca_file) if email.ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise NotificationError(f"cannot load notifications.email.ca_file: {exc}") from exc


def send_email(email: EmailSettings, to: str, subject: str, text: str) -> None:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = email.from_address, to, subject
    message["Date"] = formatdate(localtime=False, usegmt=True)
    message["Message-ID"] = make_msgid(domain=email.from_address.rpartition("@")[2] or None)
    message.set_content(text)
    try:
        smtp: smtplib.SMTP
        if email.security == "tls":
            smtp = smtplib.SMTP_SSL(email.host, email.port, timeout=email.timeout_seconds, context=_context(email))
        else:
            smtp = smtplib.SMTP(email.host, email.port, timeout=email.timeout_seconds)
        with smtp:
            if email.security == "starttls":
                smtp.starttls(context=_context(email))
            if email.user:
                smtp.login(email.user, _password(email))
            refused = smtp.send_message(message)
    except smtplib.SMTPException as exc:
        raise NotificationError(f"SMTP {email.host}:{email.port}: {type(exc).__name__}: {exc}") from exc
    except (OSError, ssl.SSLError) as exc:
        raise NotificationError(f"SMTP {email.host}:{email.port}: {type(exc).__name__}: {exc}") from exc
    if refused:
        raise NotificationError(f"SMTP {email.host}:{email.port} refused the recipient")
