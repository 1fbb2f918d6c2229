"""Outgoing e-mail: activation, password reset and account notices, each as text and HTML, over SMTP with
STARTTLS (587), implicit TLS (465) or neither (a relay on loopback). Off while `SMTP_HOST` is unset: the
flows that need it then answer 503 `email_disabled`, and activation cannot be required.

Sent with the standard library's `smtplib` and `email` on a worker thread: both speak STARTTLS and
implicit TLS, verify the server's certificate with an `ssl` context, and refuse header injection (the
`email` package's policy rejects line breaks in headers); no dependency is needed for one message at a
time. (`apprise` targets chat and push notifications, and its e-mail side has no HTML + text message.)

Mail goes out after the request that caused it has answered (`send_later`), so that a slow or failing
server delays no request and the timing of a reset request does not tell whether its address exists. A
failed send is logged, never told to the requester."""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr

from . import _errors
from ._settings import Settings

log = logging.getLogger("wrenn.controlplane.mail")


@dataclass(frozen=True, slots=True)
class Mail:
    to: str
    subject: str
    #: Paragraphs of plain text (escaped for the HTML part).
    paragraphs: tuple[str, ...]
    #: A link to act on: (label, URL).
    button: tuple[str, str] | None = None
    closing: str = "— Wrenn"


def render(mail: Mail) -> tuple[str, str]:
    """The message's text and HTML bodies."""
    text = list(mail.paragraphs)
    parts = [f"<p>{html.escape(p)}</p>" for p in mail.paragraphs]
    if mail.button is not None:
        label, url = mail.button
        text.append(f"{label}: {url}")
        parts.append(
            f'<p><a href="{html.escape(url, quote=True)}" style="display:inline-block;padding:10px 18px;'
            f'background:#3b6e4f;color:#fff;border-radius:6px;text-decoration:none">{html.escape(label)}</a></p>'
            f'<p style="color:#666;font-size:12px">{html.escape(url)}</p>'
        )
    text.append(mail.closing)
    parts.append(f"<p>{html.escape(mail.closing)}</p>")
    body = "".join(parts)
    page = (
        '<!doctype html><html><body style="font-family:sans-serif;line-height:1.5;color:#222">'
        f"{body}</body></html>"
    )
    return "\n\n".join(text) + "\n", page


class Mailer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pending: set[asyncio.Task[None]] = set()

    @property
    def enabled(self) -> bool:
        return self.settings.mail_enabled

    def require(self, what: str) -> None:
        """503 `email_disabled` when there is no SMTP server to send `what` with."""
        if not self.enabled:
            raise _errors.ApiError(
                503, "email_disabled",
                f"{what} needs e-mail, and this Wrenn has no SMTP server configured: ask its operator",
            )  # fmt: skip

    def message(self, mail: Mail) -> EmailMessage:
        text, page = render(mail)
        message = EmailMessage()
        message["From"] = self.settings.smtp_from
        message["To"] = mail.to
        message["Subject"] = mail.subject
        message["Date"] = formatdate(localtime=False)
        sender = parseaddr(self.settings.smtp_from)[1]
        message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
        message.set_content(text)
        message.add_alternative(page, subtype="html")
        return message

    def _tls(self) -> ssl.SSLContext:
        ca = self.settings.smtp_ca_file
        return ssl.create_default_context(cafile=str(ca) if ca else None)

    def _send(self, message: EmailMessage) -> None:
        s = self.settings
        timeout = s.smtp_timeout_s
        client: smtplib.SMTP
        if s.smtp_security == "tls":
            client = smtplib.SMTP_SSL(s.smtp_host, s.smtp_port or 465, timeout=timeout, context=self._tls())
        else:
            client = smtplib.SMTP(s.smtp_host, s.smtp_port or (587 if s.smtp_security == "starttls" else 25),
                                  timeout=timeout)  # fmt: skip
        with client:
            if s.smtp_security == "starttls":
                client.starttls(context=self._tls())
            if s.smtp_username:
                client.login(s.smtp_username, s.smtp_password)
            client.send_message(message)

    async def send(self, mail: Mail) -> None:
        """Send now (raises what the server or the network raised)."""
        await asyncio.to_thread(self._send, self.message(mail))

    def send_later(self, mail: Mail) -> None:
        """Send in the background; a failure is logged. Nothing happens while e-mail is off."""
        if not self.enabled:
            return

        async def deliver() -> None:
            try:
                await self.send(mail)
            except (OSError, smtplib.SMTPException, ssl.SSLError) as exc:
                log.warning("e-mail not sent", extra={"subject": mail.subject, "error": str(exc)[:300]})
            else:
                log.info("e-mail sent", extra={"subject": mail.subject})

        task = asyncio.create_task(deliver(), name="wrenn-mail")
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def drain(self, timeout_s: float = 10.0) -> None:
        """Wait (a little) for mail still being sent: at shutdown."""
        if self._pending:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*self._pending, return_exceptions=True), timeout_s)
