"""How to talk to Redis: redis-py clients configured for streamproc (where: streamproc.address)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import hiredis  # a dependency (redis[hiredis]); HIREDIS_AVAILABLE says whether redis-py uses it
import redis
import redis.asyncio
import redis.asyncio.connection
import redis.asyncio.retry
from redis.backoff import ExponentialBackoff
from redis.connection import HiredisRespSerializer
from redis.retry import Retry
from redis.utils import HIREDIS_AVAILABLE

from streamproc.address import CONNECT_TIMEOUT_S, SOCKET_TIMEOUT_S
from streamproc.wire import CannotConnect, ConnectionLost, ReplyError

try:
    from redis.maint_notifications import MaintNotificationsConfig
except ImportError:  # redis-py before 7 has no maintenance notifications
    MaintNotificationsConfig = None  # type: ignore[assignment,misc]

HEALTH_CHECK_INTERVAL_S = 15
# 0.1, 0.2, 0.4, 0.8, 1.6, 2 s: about 5 s in all, enough to ride out a server restart.
RETRY_BASE_S = 0.05
RETRY_CAP_S = 2.0
RETRIES = 6


def sync_client(
    url: str,
    client_name: str | None = None,
    socket_timeout_s: float | None = SOCKET_TIMEOUT_S,
    retries: int = RETRIES,
) -> redis.Redis:
    """A blocking client (bytes replies) that retries connection errors with backoff."""
    return redis.Redis.from_url(
        url,
        decode_responses=False,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_timeout=socket_timeout_s,
        health_check_interval=HEALTH_CHECK_INTERVAL_S,
        retry=Retry(ExponentialBackoff(cap=RETRY_CAP_S, base=RETRY_BASE_S), retries),
        client_name=client_name,
    )


class _HiredisPacking:
    """Packs commands with hiredis (C), as redis-py's blocking client already does.

    redis-py's asyncio connections pack in pure Python, re-joining a growing buffer once per
    argument: for a batch script with a thousand arguments that was the consumers' largest cost.
    """

    _serializer = HiredisRespSerializer()

    def pack_command(self, *args: Any) -> list[bytes]:
        """The command in the Redis protocol (a DataError for values redis-py would refuse)."""
        name = args[0]
        if isinstance(name, str) and " " not in name:
            # The common case straight to hiredis: str, bytes, int and float arguments.
            with contextlib.suppress(TypeError):
                return [hiredis.pack_command(args)]
        # Multi-word command names, memoryviews and refused types: redis-py's own path.
        return self._serializer.pack(*args)  # type: ignore[no-any-return]


class _DirectSend:
    """Sends a command without a task of its own when the socket takes it at once.

    redis-py wraps every send in asyncio.wait_for(…, socket_timeout) so that a server which stops
    reading cannot hang the writer; on Python 3.11 that makes a task and an event loop turn per
    command: 8-12 of the 60-70 µs of client CPU a command costs. Here the command is written
    first, and only when the transport could not pass it all to the socket (its buffer holds
    some: the server is slow to read) is the drain awaited, under the same timeout.
    """

    _writer: Any
    socket_timeout: float | None

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        """redis-py's send_packed_command, without wait_for when nothing has to wait."""
        if not isinstance(command, list) or not self.is_connected:  # type: ignore[attr-defined]
            await super().send_packed_command(command, check_health)  # type: ignore[misc]
            return
        if check_health:
            await self.check_health()  # type: ignore[attr-defined]
        writer = self._writer  # read after the health check, which may have reconnected
        if (
            writer is None
            or writer.transport.is_closing()
            or writer.transport.get_write_buffer_size()
        ):
            # Closing, or writes already queued: redis-py's own path, timeout and all.
            await super().send_packed_command(command, False)  # type: ignore[misc]
            return
        try:
            writer.writelines(command)
            transport = writer.transport
            if transport.is_closing() or transport.get_write_buffer_size():
                # Not all sent, or the write failed: drain (which raises for a lost
                # connection), as redis-py would, under the same timeout.
                await asyncio.wait_for(writer.drain(), self.socket_timeout)
        except TimeoutError:
            await self.disconnect(nowait=True)  # type: ignore[attr-defined]
            raise redis.TimeoutError("Timeout writing to socket") from None
        except OSError as exc:
            await self.disconnect(nowait=True)  # type: ignore[attr-defined]
            err_no, message = exc.args[:2] if len(exc.args) > 1 else ("UNKNOWN", exc)
            raise redis.ConnectionError(
                f"Error {err_no} while writing to socket. {message}."
            ) from exc
        except BaseException:
            # As redis-py: a command half sent leaves the connection unusable.
            await self.disconnect(nowait=True)  # type: ignore[attr-defined]
            raise


class _PackedConnection(_HiredisPacking, redis.asyncio.connection.Connection):
    pass


class _PackedSSLConnection(_HiredisPacking, redis.asyncio.connection.SSLConnection):
    pass


class _PackedUnixConnection(_HiredisPacking, redis.asyncio.connection.UnixDomainSocketConnection):
    pass


_PACKED_CLASSES: dict[type[Any], type[Any]] = {
    redis.asyncio.connection.Connection: _PackedConnection,
    redis.asyncio.connection.SSLConnection: _PackedSSLConnection,
    redis.asyncio.connection.UnixDomainSocketConnection: _PackedUnixConnection,
}
# The same, sending with _DirectSend.
_DIRECT_CLASSES: dict[type[Any], type[Any]] = {
    base: type(packed.__name__.replace("Packed", "Direct"), (_DirectSend, packed), {})
    for base, packed in _PACKED_CLASSES.items()
}


def async_client(
    url: str,
    max_connections: int = 64,
    client_name: str | None = None,
    socket_timeout_s: float | None = SOCKET_TIMEOUT_S,
    retries: int = RETRIES,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
    direct_send: bool = False,
) -> redis.asyncio.Redis:
    """An asyncio client (bytes replies) whose pool waits for a free connection, never fails.

    `direct_send` writes commands without a task each (_DirectSend): for the consumers, whose
    few large commands per batch it makes cheaper. The API leaves it off: with many concurrent
    small requests redis-py's path, which yields once per send, served 10-20% more requests/s.
    """
    # Off: they are a managed-cloud feature (hitless upgrades), and while they are on, the pool
    # skips its check of an idle connection at checkout (redis-py 7-8 with RESP3), so after a
    # server restart every pooled connection failed one command before reconnecting.
    maintenance: dict[str, Any] = {}
    if MaintNotificationsConfig is not None:
        maintenance["maint_notifications_config"] = MaintNotificationsConfig(enabled=False)
    # A plain pool raises "Too many connections" under a burst; the blocking pool queues instead.
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=None,
        decode_responses=False,
        socket_connect_timeout=connect_timeout_s,
        socket_timeout=socket_timeout_s,
        health_check_interval=HEALTH_CHECK_INTERVAL_S,
        retry=redis.asyncio.retry.Retry(
            ExponentialBackoff(cap=RETRY_CAP_S, base=RETRY_BASE_S), retries
        ),
        client_name=client_name,
        **maintenance,
    )
    if HIREDIS_AVAILABLE:
        classes = _DIRECT_CLASSES if direct_send else _PACKED_CLASSES
        pool.connection_class = classes.get(pool.connection_class, pool.connection_class)
    return redis.asyncio.Redis.from_pool(pool)


class PooledLink:
    """One connection of a redis-py client's pool, behind streamproc.wire's interface and errors:
    what `ingest_file` runs on when it is given a redis-py client (the library, a TLS URL)."""

    def __init__(self, client: redis.Redis) -> None:
        self._pool = client.connection_pool
        self._conn: Any = None

    def connect(self) -> None:
        """Take a connection from the pool (connected) unless one is held; CannotConnect."""
        if self._conn is not None:
            return
        try:
            try:
                self._conn = self._pool.get_connection()
            except TypeError:  # redis-py before 5.3 wants a command name (later ones warn on it)
                self._conn = self._pool.get_connection("EVAL")
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise CannotConnect(str(exc)) from exc

    def send(self, packed: bytes) -> None:
        """Write commands already packed; the connection reconnects if it was closed."""
        self.connect()
        try:
            # No health check: its PING would read a reply meant for a command in flight.
            self._conn.send_packed_command([packed], check_health=False)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise ConnectionLost(str(exc)) from exc

    def read(self) -> Any:
        """The next reply; ReplyError for an error reply, ConnectionLost for a broken one."""
        if self._conn is None:
            raise ConnectionLost("not connected")
        try:
            return self._conn.read_response()
        except redis.ResponseError as exc:
            raise ReplyError(str(exc)) from exc
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise ConnectionLost(str(exc)) from exc

    def call(self, *args: str | bytes | int | float) -> Any:
        """Send one command and return its reply."""
        # hiredis packs in C; its stub types the argument as a 1-tuple.
        self.send(hiredis.pack_command(args))  # type: ignore[arg-type]
        return self.read()

    def disconnect(self) -> None:
        """Close the socket (unread replies are lost); the next send reconnects."""
        if self._conn is not None:
            self._conn.disconnect()

    def release(self) -> None:
        """Give the connection back to the pool."""
        if self._conn is not None:
            self._pool.release(self._conn)
            self._conn = None
