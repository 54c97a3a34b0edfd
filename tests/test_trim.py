"""Stream trimming keeps up with any rate: one trim removes every entry the group is done with.

An approximate XTRIM removes at most 10,000 entries per call, and the stages trim once a second:
a single call per trim let a stream taking more than 10,000 entries a second grow (the facts
stream kept 25,000-30,000 entries after a 10,500 orders/s flood).
"""

from __future__ import annotations

import asyncio

import redis

from streamproc.connection import async_client
from streamproc.context import StageContext
from streamproc.settings import Settings
from streamproc.transport import TRIM_STEP, StageStream, ensure_groups
from tests.support import KEYS


def test_one_trim_removes_more_than_one_calls_worth_and_keeps_what_is_pending(
    redis_url: str, r: redis.Redis
) -> None:
    stream, group = KEYS.stream("notify"), KEYS.group("notify")
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
            # Everything delivered; all acked but the last 300, which must survive the trim.
            reply = await client.xreadgroup(group, "c1", {stream: ">"}, count=total)
            ids = [entry_id for entry_id, _ in reply[0][1]]
            await client.xack(stream, group, *ids[:-300])
            removed = await StageStream(client, ctx.scripts, KEYS, "notify", "c1").trim(60_000)
            return removed, len(ids)
        finally:
            await client.aclose()

    removed, delivered = asyncio.run(main())
    assert delivered == total
    assert removed > 3 * TRIM_STEP - 200
    left = r.xlen(stream)
    # Approximate: whole nodes only, so up to one node of acked entries stays before the pending.
    assert 300 <= left <= 300 + 200, left
    assert r.xpending(stream, group)["pending"] == 300
    kept = r.xrange(stream, count=left)
    assert [f["o"] for _, f in kept][-300:] == [f"T{i}" for i in range(total - 300, total)]
