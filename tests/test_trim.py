"""Stream trimming keeps up with any rate: one trim removes every entry the groups are done with.

An approximate XTRIM removes at most 10,000 entries per call, and the stages trim once a second:
a single call per trim let a stream taking more than 10,000 entries a second grow (the facts
stream kept 25,000-30,000 entries after a 10,500 orders/s flood).
"""

from __future__ import annotations

import asyncio

import pytest
import redis

from streamproc.connection import async_client
from streamproc.context import StageContext
from streamproc.settings import Settings
from streamproc.transport import TRIM_STEP, StageStream, ensure_groups
from tests.support import KEYS


@pytest.mark.parametrize("laggard", ["notify", "snapshot"])
def test_one_trim_removes_more_than_one_calls_worth_and_keeps_what_is_pending(
    redis_url: str, r: redis.Redis, laggard: str
) -> None:
    """On the facts stream, which two groups read: the stage that trims is done with every entry,
    the other group still has the last 300 pending, and they survive."""
    stream = KEYS.sources("notify")[0]
    assert stream == KEYS.sources("snapshot")[0]
    trimmer = "snapshot" if laggard == "notify" else "notify"
    total = 3 * TRIM_STEP + 500

    async def main() -> tuple[int, int]:
        client = async_client(redis_url)
        try:
            ctx = StageContext.build(Settings(redis_url=redis_url), client)
            await ensure_groups(client, KEYS)
            async with client.pipeline(transaction=False) as pipe:
                for i in range(total):
                    pipe.xadd(stream, {"o": f"T{i}"})
                await pipe.execute()
            # Everything delivered to both; all acked but the laggard's last 300.
            delivered = 0
            for stage in ("notify", "snapshot"):
                reply = await client.xreadgroup(KEYS.group(stage), "c1", {stream: ">"}, count=total)
                ids = [entry_id for entry_id, _ in reply[0][1]]
                delivered += len(ids)
                await client.xack(
                    stream, KEYS.group(stage), *(ids[:-300] if stage == laggard else ids)
                )
            removed = await StageStream(client, ctx.scripts, KEYS, trimmer, "c1").trim(60_000)
            return removed, delivered
        finally:
            await client.aclose()

    removed, delivered = asyncio.run(main())
    assert delivered == 2 * total
    assert removed > 3 * TRIM_STEP - 200
    left = r.xlen(stream)
    # Approximate: whole nodes only, so up to one node of acked entries stays before the pending.
    assert 300 <= left <= 300 + 200, left
    assert r.xpending(stream, KEYS.group(laggard))["pending"] == 300
    assert r.xpending(stream, KEYS.group(trimmer))["pending"] == 0
    kept = r.xrange(stream, count=left)
    assert [f["o"] for _, f in kept][-300:] == [f"T{i}" for i in range(total - 300, total)]


def test_a_trim_keeps_what_the_other_group_has_not_read(redis_url: str, r: redis.Redis) -> None:
    """Entries notify's group has not been handed yet stay, however far the snapshot stage is."""
    stream = KEYS.sources("notify")[0]

    async def main() -> int:
        client = async_client(redis_url)
        try:
            ctx = StageContext.build(Settings(redis_url=redis_url), client)
            await ensure_groups(client, KEYS)
            for i in range(500):
                await client.xadd(stream, {"o": f"U{i}"})
            reply = await client.xreadgroup(KEYS.group("snapshot"), "c1", {stream: ">"}, count=500)
            await client.xack(stream, KEYS.group("snapshot"), *(e for e, _ in reply[0][1]))
            return int(await StageStream(client, ctx.scripts, KEYS, "snapshot", "c1").trim(60_000))
        finally:
            await client.aclose()

    assert asyncio.run(main()) == 0
    assert r.xlen(stream) == 500
