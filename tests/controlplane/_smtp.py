"""A real SMTP server for tests (aiosmtpd) on loopback, with STARTTLS or implicit TLS under a certificate
the test makes (its own CA, with `cryptography`), and login; it keeps what it received."""

from __future__ import annotations

import email
import email.policy
import socket
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests._certs import TestCA

USERNAME, PASSWORD = "wrenn", "mail secret"


def make_certificate(directory: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate, server key) for 127.0.0.1 and localhost."""
    directory = directory / "mail-tls"  # apart from a control plane's own `ca.pem` in the same directory
    directory.mkdir(exist_ok=True)
    ca = TestCA(directory, "wrenn test mail CA")
    return (ca.cert_file, *ca.issue("mail", "localhost", "127.0.0.1"))


@dataclass
class Inbox:
    host: str
    port: int
    ca_file: Path
    security: str
    received: list[EmailMessage] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # aiosmtpd's handler hook
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        self.received.append(message)
        return "250 OK"

    def wait(self, count: int, within_s: float = 10.0) -> list[EmailMessage]:
        """The first `count` messages, waiting for them to arrive (mail is sent after the answer)."""
        deadline = time.monotonic() + within_s
        while len(self.received) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} e-mails, got {len(self.received)}")
            time.sleep(0.05)
        return self.received[:count]

    def settings(self) -> dict[str, Any]:
        """The control plane's settings for this server."""
        return {
            "smtp_host": self.host, "smtp_port": self.port, "smtp_security": self.security,
            "smtp_ca_file": self.ca_file, "smtp_username": USERNAME, "smtp_password": PASSWORD,
            "smtp_from": "Wrenn <wrenn@example.com>", "public_url": "https://wrenn.example.com",
        }  # fmt: skip


def _authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
        USERNAME.encode(),
        PASSWORD.encode(),
    )
    return AuthResult(success=ok)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def smtp_server(directory: Path, security: str) -> Iterator[Inbox]:
    """An SMTP server on 127.0.0.1: `starttls` (STARTTLS required before login and mail) or `tls`
    (implicit TLS); login required either way."""
    ca, cert, key = make_certificate(directory)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    inbox = Inbox("127.0.0.1", _free_port(), ca, security)
    options: dict[str, Any] = {"authenticator": _authenticate, "auth_required": True}
    if security == "starttls":
        options |= {"tls_context": context, "require_starttls": True}
    else:
        # the connection is TLS from its first byte (aiosmtpd only knows of TLS begun with STARTTLS)
        options |= {"ssl_context": context, "auth_require_tls": False}
    controller = Controller(inbox, hostname=inbox.host, port=inbox.port, **options)
    controller.start()
    try:
        yield inbox
    finally:
        controller.stop()
