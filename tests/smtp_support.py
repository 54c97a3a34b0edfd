"""A real SMTP server for tests (aiosmtpd) on a loopback port, keeping what it receives."""

from __future__ import annotations

import email
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import default as default_policy
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.helpers import HOST, free_port

REFUSED_PREFIX = "refuse"  # recipients starting with this get a permanent 550


@dataclass(frozen=True)
class Received:
    """One message as the server got it: envelope recipients and the parsed message."""

    recipients: list[str]
    message: EmailMessage
    authenticated: bool = False

    @property
    def body(self) -> str:
        """The plain-text body."""
        part = self.message.get_body(("plain",))
        assert part is not None, self.message
        return str(part.get_content())


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    # aiosmtpd calls these hooks by name.
    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if address.startswith(REFUSED_PREFIX):
            return "550 5.1.1 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = email.message_from_bytes(envelope.content, policy=default_policy)
        assert isinstance(parsed, EmailMessage)
        with self.sink.lock:
            received = Received(list(envelope.rcpt_tos), parsed, bool(session.authenticated))
            self.sink.received.append(received)
        return "250 Message accepted for delivery"


class SmtpSink:
    """An SMTP server on 127.0.0.1 that accepts every message (refusing `refuse…` mailboxes)."""

    def __init__(self, port: int | None = None, login: tuple[str, str] | None = None) -> None:
        self.port = port or free_port()
        self.login = login  # when set, AUTH with exactly these succeeds (no TLS here)
        self.received: list[Received] = []
        self.lock = threading.Lock()
        self._controller: Controller | None = None

    @property
    def url(self) -> str:
        """STREAMPROC_SMTP_URL for this server."""
        return f"smtp://{HOST}:{self.port}?timeout=5"

    def start(self) -> SmtpSink:
        """Listen (in a thread of this process) until stop()."""
        options: dict[str, Any] = {}
        if self.login is not None:
            # AUTH is offered without TLS (loopback only); not required, so aiosmtpd does not
            # warn, and each message records whether its session logged in.
            options = {"authenticator": self._authenticate, "auth_require_tls": False}
        self._controller = Controller(_Handler(self), hostname=HOST, port=self.port, **options)
        self._controller.start()
        return self

    def stop(self) -> None:
        """Stop listening (what was received is kept)."""
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def _authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        given = (
            (auth_data.login.decode(), auth_data.password.decode())
            if isinstance(auth_data, LoginPassword)
            else None
        )
        return AuthResult(success=given == self.login)

    def messages(self) -> list[Received]:
        """Everything received so far."""
        with self.lock:
            return list(self.received)

    def wait_for(self, count: int, timeout_s: float = 20) -> list[Received]:
        """Wait until at least `count` messages arrived; all of them."""
        return wait_until(lambda: len(self.messages()) >= count, timeout_s, self.messages)


def wait_until(
    done: Callable[[], bool], timeout_s: float, result: Callable[[], Any] = lambda: None
) -> Any:
    """Poll `done` every 50 ms; `result()` once it holds, AssertionError on timeout."""
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s: {result()}")
        time.sleep(0.05)
    return result()
