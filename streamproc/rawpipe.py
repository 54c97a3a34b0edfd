"""A lean pipeline for hot read paths: one write, raw replies, no per-command client machinery.

redis-py's Pipeline object costs about as much CPU as the I/O itself for a two-command read. The
API's busiest endpoints send their few commands with this instead; replies come back exactly as
the server sent them (an HGETALL is a flat list; see `pairs`).

Taking a connection from redis-py's blocking pool and giving it back costs a condition, a
timeout, a probe of the socket and several observability hooks: about a fifth of the API's CPU
for an order lookup. So this module keeps a few connections checked out of each pool and reuses
them (last in, first out); the pool still creates, limits and closes them.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import redis.asyncio

# Idle connections kept per pool: more than the reads one process has in flight at once under
# load (their replies take microseconds); the rest go back to the pool.
KEEP = 16
_kept: weakref.WeakKeyDictionary[Any, list[Any]] = weakref.WeakKeyDictionary()


async def pipelined(client: redis.asyncio.Redis, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Send read-only `commands` in one write on one connection; their raw replies, in order.

    A kept connection the server closed while it was idle (a restart) fails with a
    ConnectionError before any reply; the commands are then sent once more on a connection from
    the pool, which reconnects. Only reads come here, so sending them twice is harmless.
    """
    pool = client.connection_pool
    kept = _kept.setdefault(pool, [])
    if kept:
        try:
            return await _use(pool, kept, kept.pop(), commands)
        except redis.ConnectionError:
            pass  # a kept connection the server closed: once more on a pooled one
    conn = await pool.get_connection()  # type: ignore[no-untyped-call]
    return await _use(pool, kept, conn, commands)


async def _use(
    pool: Any, kept: list[Any], conn: Any, commands: Sequence[tuple[Any, ...]]
) -> list[Any]:
    """One write of `commands` on `conn`, then every reply; `conn` is then kept (up to KEEP) or
    given back to the pool."""
    try:
        # Each command packed by the connection's own packer (hiredis, streamproc.connection),
        # without redis-py's pack_commands around it: its Python loop regrouping the packed
        # parts by size was 7% of the API's CPU for an order (py-spy).
        packed = [part for command in commands for part in conn.pack_command(*command)]
        await conn.send_packed_command(packed)
        replies = [await conn.read_response() for _ in commands]
    except BaseException:
        # A reply left unread (an error reply, a timeout, a cancel) would answer the next
        # caller: closed, then given back (the pool reconnects it).
        await conn.disconnect()
        await pool.release(conn)
        raise
    if len(kept) < KEEP:
        kept.append(conn)
    else:
        await pool.release(conn)
    return replies


def pairs(reply: list[Any] | dict[Any, Any]) -> dict[Any, Any]:
    """An HGETALL reply as a dict (RESP3 sends a map already, RESP2 a flat list)."""
    if isinstance(reply, dict):
        return reply
    return dict(zip(reply[::2], reply[1::2], strict=True))
