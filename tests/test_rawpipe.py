"""The API's lean read pipeline keeps a few connections out of the pool and survives losing one."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
import redis
import redis.asyncio

from streamproc.connection import async_client
from streamproc.rawpipe import KEEP, _kept, pairs, pipelined
from tests.helpers import ServerHandle

T = TypeVar("T")


def run(redis_url: str, work: Callable[[redis.asyncio.Redis], Awaitable[T]], retries: int = 0) -> T:
    """Run `work(client)` on a fresh asyncio client of the test server; like the API's, it does
    not retry commands by default."""

    async def main() -> T:
        client = async_client(redis_url, client_name="rawpipe-test", retries=retries)
        try:
            return await work(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


def test_a_connection_is_kept_and_reused(r: redis.Redis, redis_url: str) -> None:
    r.hset("h", mapping={"a": "1"})

    async def work(client: redis.asyncio.Redis) -> tuple[list[Any], list[Any], int]:
        first = await pipelined(client, [("HGET", "h", "a"), ("HGETALL", "h")])
        [conn] = _kept[client.connection_pool]
        second = await pipelined(client, [("HGET", "h", "a")])
        [again] = _kept[client.connection_pool]
        assert again is conn
        opened = [c for c in r.client_list() if c["name"] == "rawpipe-test"]
        return first, second, len(opened)

    first, second, opened = run(redis_url, work)
    assert first[0] == b"1" and pairs(first[1]) == {b"a": b"1"}
    assert second == [b"1"]
    assert opened == 1  # the server saw one connection for both reads


def test_concurrent_reads_keep_at_most_keep_connections(r: redis.Redis, redis_url: str) -> None:
    r.set("k", "v")

    async def work(client: redis.asyncio.Redis) -> tuple[list[list[Any]], int]:
        replies = await asyncio.gather(
            *(pipelined(client, [("GET", "k")]) for _ in range(KEEP * 3))
        )
        return replies, len(_kept[client.connection_pool])

    replies, kept = run(redis_url, work)
    assert replies == [[b"v"]] * (KEEP * 3)
    assert 1 <= kept <= KEEP


def test_a_kept_connection_the_server_closed_is_replaced(r: redis.Redis, redis_url: str) -> None:
    r.set("k", "v")

    async def work(client: redis.asyncio.Redis) -> list[Any]:
        await pipelined(client, [("GET", "k")])
        # The server drops the idle connection, as a restart would.
        assert r.client_kill_filter(_type="normal", skipme=True) >= 1
        await asyncio.sleep(0.05)
        return await pipelined(client, [("GET", "k")])

    assert run(redis_url, work) == [b"v"]


def test_an_error_reply_is_raised_and_the_connection_not_kept(
    r: redis.Redis, redis_url: str
) -> None:
    r.set("s", "string")
    r.set("k", "v")

    async def work(client: redis.asyncio.Redis) -> list[Any]:
        await pipelined(client, [("GET", "k")])
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            await pipelined(client, [("HGET", "s", "f"), ("GET", "k")])
        assert _kept[client.connection_pool] == []
        return await pipelined(client, [("GET", "k")])

    assert run(redis_url, work) == [b"v"]


def test_pooled_connections_survive_a_server_restart(
    r: redis.Redis, redis_url: str, redis_server: ServerHandle
) -> None:
    """Every idle connection in the pool (and the kept one) reconnects after a restart instead
    of failing its next command: the pool's checkout check is on (maintenance notifications,
    which turn it off in redis-py 7-8 with RESP3, are off)."""
    r.set("k", "v")

    async def work(client: redis.asyncio.Redis) -> list[Any]:
        # Three connections open at once, then idle in the pool; one more kept by pipelined.
        await asyncio.gather(*(client.blpop(["nothing"], 0.05) for _ in range(3)))
        await pipelined(client, [("GET", "k")])
        redis_server.kill()
        await asyncio.sleep(0.1)  # the process runs on meanwhile: its sockets see the close
        redis_server.start()
        answers = [await client.get("k") for _ in range(4)]
        answers += await pipelined(client, [("GET", "k")])
        return answers

    assert run(redis_url, work) == [b"v"] * 5
