"""A lean blocking Redis connection: the standard library and hiredis, nothing else.

`streamproc ingest` is a short-lived process, and the server sits idle until its first batch
arrives. Importing redis-py (which imports asyncio and its own asyncio client) took 0.1 s of the
command's 0.18 s start. This connection is all an import needs: TCP or a unix socket, AUTH and
SELECT from the URL, pipelined commands and their replies. `connect` returns None for what it
does not cover (TLS, client options in the URL's query), and the caller uses redis-py instead.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis

from streamproc.address import DEFAULT_PORT

_READ_SIZE = 65536


class WireError(Exception):
    """Talking to the server failed."""


class ReplyError(WireError):
    """The server answered a command with an error (its message is the exception's text)."""


class ConnectionLost(WireError):
    """No connection: it could not be made, broke, timed out or read garbage."""


class CannotConnect(ConnectionLost):
    """The connection could not be made (nothing was sent)."""


@dataclass(frozen=True, slots=True)
class Address:
    """Where the server is and how to log in, parsed from a redis:// or unix:// URL."""

    host: str = "localhost"
    port: int = DEFAULT_PORT
    path: str | None = None  # a unix socket
    username: str | None = None
    password: str | None = None
    db: int = 0


def parse_url(url: str) -> Address | None:
    """The address in `url`, or None when the URL needs more than this module does (as redis-py
    reads it: the database from the path or `?db=`, credentials percent-decoded)."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    if parts.scheme not in ("redis", "unix") or set(query) - {"db"}:
        return None
    try:
        db = int(query["db"][0]) if "db" in query else 0
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password else None
        if parts.scheme == "unix":
            return Address(path=parts.path, username=username, password=password, db=db)
        if "db" not in query and parts.path.strip("/"):
            db = int(parts.path.strip("/"))
        return Address(
            host=parts.hostname or "localhost",
            port=parts.port or DEFAULT_PORT,
            username=username,
            password=password,
            db=db,
        )
    except ValueError:
        return None  # redis-py gives the clearer error for a malformed URL


class Wire:
    """One blocking connection, made on first use and again after a failure (like redis-py's).

    `send` and `read` are separate so a caller can keep several commands in flight; replies come
    back in order. An error reply raises ReplyError and leaves the connection usable; anything
    else that fails closes it and raises ConnectionLost.
    """

    def __init__(self, address: Address, connect_timeout_s: float, socket_timeout_s: float) -> None:
        self.address = address
        self._connect_timeout_s = connect_timeout_s
        self._socket_timeout_s = socket_timeout_s
        self._sock: socket.socket | None = None
        self._reader = hiredis.Reader(replyError=ReplyError)

    def connect(self) -> None:
        """Connect and log in, unless connected; CannotConnect when that fails."""
        if self._sock is not None:
            return
        address = self.address
        try:
            if address.path is not None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(self._connect_timeout_s)
                try:
                    sock.connect(address.path)
                except OSError:
                    sock.close()
                    raise
            else:
                sock = socket.create_connection(
                    (address.host, address.port), timeout=self._connect_timeout_s
                )
                # Batches go out as soon as they are packed: no waiting for the previous ack.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            raise CannotConnect(str(exc)) from exc
        sock.settimeout(self._socket_timeout_s)
        self._sock = sock
        self._reader = hiredis.Reader(replyError=ReplyError)
        try:
            if address.password is not None:
                credentials = (address.username, address.password)
                self.call("AUTH", *(c for c in credentials if c is not None))
            if address.db:
                self.call("SELECT", address.db)
        except WireError as exc:
            self.disconnect()
            raise CannotConnect(str(exc)) from exc

    def send(self, packed: bytes) -> None:
        """Write commands already packed (hiredis.pack_command), connecting first if need be."""
        self.connect()
        assert self._sock is not None
        try:
            self._sock.sendall(packed)
        except OSError as exc:
            self._broke(exc)

    def read(self) -> Any:
        """The next reply: bytes, int, None or a list of them; raises ReplyError for an error."""
        sock = self._sock
        if sock is None:
            raise ConnectionLost("not connected")
        reply = self._reader.gets()
        while reply is False:
            try:
                data = sock.recv(_READ_SIZE)
            except OSError as exc:
                self._broke(exc)
            if not data:
                self._broke(ConnectionResetError("Connection closed by server"))
            self._reader.feed(data)
            try:
                reply = self._reader.gets()
            except hiredis.ProtocolError as exc:
                self._broke(exc)
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    def call(self, *args: str | bytes | int | float) -> Any:
        """Send one command and return its reply (nothing else may be in flight)."""
        # hiredis packs in C; its stub types the argument as a 1-tuple.
        self.send(hiredis.pack_command(args))  # type: ignore[arg-type]
        return self.read()

    def release(self) -> None:
        """Nothing to give back: the caller holds this connection (see PooledLink.release)."""

    def disconnect(self) -> None:
        """Close the connection (replies still unread are lost); the next use reconnects."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _broke(self, exc: BaseException) -> NoReturn:
        self.disconnect()
        text = "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
        raise ConnectionLost(text) from exc


def connect(url: str, connect_timeout_s: float, socket_timeout_s: float) -> Wire | None:
    """A connected Wire for `url`, None when the URL needs redis-py; CannotConnect on failure."""
    address = parse_url(url)
    if address is None:
        return None
    wire = Wire(address, connect_timeout_s, socket_timeout_s)
    wire.connect()
    return wire
