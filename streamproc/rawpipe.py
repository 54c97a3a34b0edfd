"""A lean pipeline for hot read paths: one write, raw replies, no per-command client machinery.

redis-py's Pipeline object costs about as much CPU as the I/O itself for a two-command read. The
API's busiest endpoints send their few commands with this instead; replies come back exactly as
the server sent them (an HGETALL is a flat list; see `pairs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio


async def pipelined(client: redis.asyncio.Redis, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Send `commands` in one write on one pooled connection; their raw replies, in order."""
    pool = client.connection_pool
    conn = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        await conn.send_packed_command(conn.pack_commands(commands))
        return [await conn.read_response() for _ in commands]
    except BaseException:
        # A reply left unread (an error reply, a timeout, a cancel) would answer the next caller.
        await conn.disconnect()
        raise
    finally:
        await pool.release(conn)


def pairs(reply: list[Any] | dict[Any, Any]) -> dict[Any, Any]:
    """An HGETALL reply as a dict (RESP3 sends a map already, RESP2 a flat list)."""
    if isinstance(reply, dict):
        return reply
    return dict(zip(reply[::2], reply[1::2], strict=True))
