"""The email channel: plain-text notifications over SMTP (`STREAMPROC_SMTP_URL`).

The standard library's smtplib does the protocol, in worker threads: a batch's emails are split
over a few connections that run at once, so a slow server delays the batch, not the event loop.
SMTP has no idempotency key, so email is at least once: a crash after the server accepted a message
and before the record says "sent" sends it again. Every attempt of one notification carries the
same Message-ID, which lets a mail client drop such a repeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import smtplib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, parseaddr
from urllib.parse import parse_qs, unquote, urlsplit

from streamproc.errors import ConfigError
from streamproc.notifications import EMAIL, SUCCESS, Notification

SCHEMES = {"smtp": 25, "smtps": 465}
SUBMISSION_PORT = 587  # where STARTTLS submission listens when the URL names no port
DEFAULT_TIMEOUT_S = 10.0
# Connections per process: enough to overlap SMTP round trips without flooding a relay.
CONNECTIONS = 4
# Below this many emails per connection, opening another costs more than it saves.
EMAILS_PER_CONNECTION = 8
ERROR_CHARS = 300
NOT_CONFIGURED = "email is not configured: set STREAMPROC_SMTP_URL"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True, slots=True)
class SmtpConfig:
    """Where and how to reach the SMTP server, parsed from STREAMPROC_SMTP_URL."""

    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    starttls: bool = False
    implicit_tls: bool = False
    timeout_s: float = DEFAULT_TIMEOUT_S

    @classmethod
    def from_url(cls, url: str) -> SmtpConfig:
        """`smtp[s]://[user:pass@]host[:port][?starttls=1&timeout=S]`; ConfigError otherwise.

        Messages never repeat the URL: it may hold a password.
        """
        name = "STREAMPROC_SMTP_URL"
        parts = urlsplit(url)
        if parts.scheme not in SCHEMES:
            raise ConfigError(f"{name}: use smtp://host[:port] or smtps://host[:port]")
        try:
            port = parts.port
        except ValueError:
            raise ConfigError(f"{name}: the port is not a number from 1 to 65535") from None
        if not parts.hostname:
            raise ConfigError(f"{name}: no host")
        query = parse_qs(parts.query, keep_blank_values=True)
        unknown = sorted(set(query) - {"starttls", "timeout"})
        if unknown:
            raise ConfigError(f"{name}: unknown option(s) {', '.join(unknown)}")
        starttls = _flag(query.get("starttls", ["0"])[-1], name)
        timeout_s = DEFAULT_TIMEOUT_S
        if "timeout" in query:
            try:
                timeout_s = float(query["timeout"][-1])
            except ValueError:
                raise ConfigError(f"{name}: timeout must be a number of seconds") from None
            if not 0 < timeout_s <= 300:
                raise ConfigError(f"{name}: timeout must be above 0 and at most 300 seconds")
        implicit_tls = parts.scheme == "smtps"
        if starttls and implicit_tls:
            raise ConfigError(f"{name}: smtps:// is TLS already; starttls is for smtp://")
        default_port = SUBMISSION_PORT if starttls else SCHEMES[parts.scheme]
        return cls(
            host=parts.hostname,
            port=port or default_port,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            starttls=starttls,
            implicit_tls=implicit_tls,
            timeout_s=timeout_s,
        )


def _flag(value: str, name: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ConfigError(f"{name}: starttls must be 1 or 0")


@dataclass(frozen=True, slots=True)
class Email:
    """One outgoing email of one notification record."""

    record_id: str
    to: str
    subject: str
    body: str
    message_id: str


@dataclass(frozen=True, slots=True)
class SendResult:
    """What became of one email: accepted (no error), or an error that is worth retrying or not."""

    error: str = ""
    permanent: bool = False

    @property
    def ok(self) -> bool:
        """The server accepted the message."""
        return not self.error


def compose(
    record: Notification, recipient: str, customer_name: str, sender: str, namespace: str
) -> Email:
    """The plain-text email of a record: names the order, its status and its total."""
    order_id = record.order_reference
    if record.notification_type == SUCCESS:
        subject = f"Your order {order_id} is complete"
    else:
        subject = f"Your order {order_id} could not be completed"
    body = (
        f"Hello {customer_name or 'customer'},\n\n"
        f"{subject}.\n\n"
        f"Order: {order_id}\n"
        f"Status: {record.order_status.replace('_', ' ')}\n"
        f"Total: {record.total_amount} {record.currency}\n"
    )
    # The same id on every attempt of this notification, so a repeat can be recognised.
    digest = hashlib.blake2b(f"{namespace}:{record.id}".encode(), digest_size=12).hexdigest()
    domain = parseaddr(sender)[1].rpartition("@")[2] or "streamproc.invalid"
    return Email(record.id, recipient, subject, body, f"<{digest}.{EMAIL}@{domain}>")


class EmailChannel:
    """Sends emails over SMTP, a few connections at once, each in a worker thread."""

    name = EMAIL

    def __init__(
        self, config: SmtpConfig | None, sender: str, connections: int = CONNECTIONS
    ) -> None:
        self.config = config
        self.sender = sender
        self.connections = max(1, connections)
        self._slots = asyncio.Semaphore(self.connections)

    async def send(self, emails: Sequence[Email]) -> list[SendResult]:
        """One result per email, in order; never raises for what the server or network does."""
        if not emails:
            return []
        config = self.config
        if config is None:
            return [SendResult(NOT_CONFIGURED, permanent=True)] * len(emails)
        count = min(self.connections, -(-len(emails) // EMAILS_PER_CONNECTION))
        size = -(-len(emails) // count)
        chunks = [emails[i : i + size] for i in range(0, len(emails), size)]
        done = await asyncio.gather(*(self._send_chunk(config, chunk) for chunk in chunks))
        return [result for chunk_results in done for result in chunk_results]

    async def _send_chunk(self, config: SmtpConfig, chunk: Sequence[Email]) -> list[SendResult]:
        async with self._slots:
            return await asyncio.to_thread(deliver, config, self.sender, chunk)


def deliver(config: SmtpConfig, sender: str, emails: Sequence[Email]) -> list[SendResult]:
    """Send `emails` over one SMTP connection (blocking): one result per email."""
    try:
        client = _connect(config)
    except (OSError, smtplib.SMTPException) as exc:
        return [SendResult(_describe(exc))] * len(emails)
    results: list[SendResult] = []
    try:
        for index, email in enumerate(emails):
            try:
                client.send_message(_message(email, sender))
            except smtplib.SMTPRecipientsRefused as exc:
                code = min((code for code, _ in exc.recipients.values()), default=550)
                results.append(SendResult(_describe(exc), permanent=_permanent(code)))
            except smtplib.SMTPResponseException as exc:
                results.append(SendResult(_describe(exc), permanent=_permanent(exc.smtp_code)))
            except smtplib.SMTPServerDisconnected as exc:
                # The connection is gone: this email and the rest of the chunk are retried later.
                results += [SendResult(_describe(exc))] * (len(emails) - index)
                break
            except smtplib.SMTPException as exc:  # (an OSError too: caught before the next line)
                results.append(SendResult(_describe(exc)))
            except OSError as exc:
                results += [SendResult(_describe(exc))] * (len(emails) - index)
                break
            except ValueError as exc:  # an address or header the email library refuses
                results.append(SendResult(f"invalid email: {exc}"[:ERROR_CHARS], permanent=True))
            else:
                results.append(SendResult())
    finally:
        with contextlib.suppress(OSError, smtplib.SMTPException):
            client.quit()
        client.close()
    return results


def _connect(config: SmtpConfig) -> smtplib.SMTP:
    client: smtplib.SMTP
    if config.implicit_tls:
        context = ssl.create_default_context()
        client = smtplib.SMTP_SSL(
            config.host, config.port, timeout=config.timeout_s, context=context
        )
    else:
        client = smtplib.SMTP(config.host, config.port, timeout=config.timeout_s)
    try:
        client.ehlo_or_helo_if_needed()
        if config.starttls:
            client.starttls(context=ssl.create_default_context())
            client.ehlo()
        if config.username:
            client.login(config.username, config.password or "")
    except BaseException:
        client.close()
        raise
    return client


def _message(email: Email, sender: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = email.to
    message["Subject"] = email.subject
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = email.message_id
    message.set_content(email.body)
    return message


def _permanent(code: int) -> bool:
    # 5xx replies are final (unknown mailbox, refused sender); 4xx ones are worth another try.
    return 500 <= code < 600


def _describe(exc: BaseException) -> str:
    """A one-line error for the record: the server's reply or the network error, no host."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        code, refusal = next(iter(exc.recipients.values()), (0, b""))
        text = f"SMTP {code}: recipient refused: {refusal.decode(errors='replace')}"
    elif isinstance(exc, smtplib.SMTPResponseException):
        reply: bytes | str = exc.smtp_error
        shown = reply.decode(errors="replace") if isinstance(reply, bytes) else reply
        text = f"SMTP {exc.smtp_code}: {shown}"
    elif isinstance(exc, OSError) and not isinstance(exc, smtplib.SMTPException):
        text = f"SMTP connection failed: {exc.strerror or type(exc).__name__}"
    else:
        text = f"SMTP error: {type(exc).__name__}: {exc}"
    return " ".join(text.split())[:ERROR_CHARS]
