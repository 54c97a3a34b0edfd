"""The notification store's own server costs: claim and settle per record, pages and lookups.

    python -m benchmarks.notifications [--records 100000] [--batch 200] [--quick]

Runs the store's scripts through `NotificationStore`, as the notify stage calls them, on a
private server (AOF on, as the other benchmarks): RECORDS orders (four per customer, as the
pipeline benchmark's data) get their first attempt claimed, then settled as sent, in batches of
BATCH; then pages of each kind of listing and lookups by id are timed. Every figure is the
server's own time (INFO commandstats, all commands) around one phase, so it is what that call
costs the server, not the client or the network. Also reported: Redis memory per record after
the settlements. Results go to benchmarks/results/notifications.json.
"""

from __future__ import annotations

import argparse
import asyncio
import random
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import redis
import redis.asyncio as aredis

from benchmarks.common import machine, private_server, save
from streamproc.connection import async_client
from streamproc.keys import Keys
from streamproc.lua import AsyncScripts
from streamproc.models import COMPLETED, Line, Order, encode_order
from streamproc.notification_store import (
    ClaimRequest,
    NotificationStore,
    PageQuery,
    Settlement,
)
from streamproc.notifications import (
    LOG,
    SCORE_PER_MS,
    SENT,
    SUCCESS,
    Notification,
    new_record,
)

QUICK_RECORDS = 2_000
ORDERS_PER_CUSTOMER = 4
PAGE_REPEATS = 200
LOOKUP_IDS = 50
START_MS = 1_795_564_800_000  # 2026-11-25T00:00:00Z
T = TypeVar("T")


def _order(i: int) -> Order:
    return Order(
        f"ORD-{i}",
        i // ORDERS_PER_CUSTOMER,
        "Pat Doe",
        "USD",
        "2025-11-10T12:00:00Z",
        [Line("SKU-1", "Product 1", 1 + i % 3, 1999)],
    )


def _server_usec(client: redis.Redis) -> int:
    """Every command's µs since the last reset (INFO commandstats)."""
    return sum(int(stat["usec"]) for stat in client.info("commandstats").values())


async def _timed(client: redis.Redis, work: Awaitable[T]) -> tuple[T, int]:
    """`work`'s result and the server µs it took (the benchmark is the server's only client):
    a coroutine runs only once awaited, after the reset."""
    client.config_resetstat()
    result = await work
    return result, _server_usec(client)


async def _first_attempts(
    store: NotificationStore, client: redis.Redis, records: int, batch: int
) -> tuple[float, float, list[Notification]]:
    """Claim, then settle as sent, every record's first attempt; µs per record of each."""
    claim_us = settle_us = 0
    made: list[Notification] = []
    for start in range(0, records, batch):
        now = START_MS + start * 1000  # a second per order: 100,000 records span two UTC days
        orders = [_order(i) for i in range(start, min(start + batch, records))]
        wanted = [new_record(order, COMPLETED, LOG) for order in orders]
        requests = [
            ClaimRequest(r.id, o.order_id, COMPLETED, 1, 0, o.customer_id)
            for r, o in zip(wanted, orders, strict=True)
        ]
        claims, used = await _timed(client, store.claim("bench", now, 60_000, requests))
        claim_us += used
        if any(claim.verdict != "new" for claim in claims):
            raise RuntimeError(f"claims at {start}: {[c.verdict for c in claims]}")
        for record in wanted:
            record.attempts, record.created_ms = 1, now
            record.status, record.sent_ms, record.log_offset = SENT, now, -1
        items = [Settlement(SENT, record, first=True) for record in wanted]
        applied, used = await _timed(client, store.settle("bench", items))
        settle_us += used
        if not all(applied):
            raise RuntimeError(f"settlements at {start} not applied")
        made += wanted
    return claim_us / records, settle_us / records, made


async def _pages(
    store: NotificationStore, client: redis.Redis, made: list[Notification]
) -> dict[str, float]:
    """µs per page of 50 for each kind of listing, over PAGE_REPEATS calls each."""
    middle = made[len(made) // 2]
    day_start = middle.created_ms - middle.created_ms % 86_400_000
    queries = {
        "newest": PageQuery(),
        "type_and_channel": PageQuery(kind=SUCCESS, channel=LOG),
        "status_sent": PageQuery(status=SENT),
        "customer": PageQuery(customer_id=middle.customer_id),
        "one_day": PageQuery(from_ms=day_start, until_ms=day_start + 86_400_000),
        "one_hour": PageQuery(from_ms=middle.created_ms, until_ms=middle.created_ms + 3_600_000),
        "cursor_half_way": PageQuery(cursor=middle.created_ms * SCORE_PER_MS),
    }
    out: dict[str, float] = {}
    for name, query in queries.items():

        async def many(query: PageQuery = query) -> int:
            total = 0
            for _ in range(PAGE_REPEATS):
                total += len((await store.page(query)).items)
            return total

        listed, used = await _timed(client, many())
        if listed == 0:
            raise RuntimeError(f"page {name} listed nothing")
        out[name] = round(used / PAGE_REPEATS, 1)
    return out


async def _lookups(
    store: NotificationStore, client: redis.Redis, made: list[Notification]
) -> float:
    """µs per record looked up by id (GET /api/notifications/order/{id}), LOOKUP_IDS at a time."""
    rng = random.Random(8)
    ids = [made[rng.randrange(len(made))].id for _ in range(LOOKUP_IDS * 20)]

    async def all_of_them() -> int:
        found = 0
        for start in range(0, len(ids), LOOKUP_IDS):
            found += sum(r is not None for r in await store.get(ids[start : start + LOOKUP_IDS]))
        return found

    found, used = await _timed(client, all_of_them())
    if found != len(ids):
        raise RuntimeError(f"looked up {len(ids)} records, found {found}")
    return used / len(ids)


async def _measure(url: str, records: int, batch: int) -> dict[str, Any]:
    sync = redis.Redis.from_url(url)
    keys = Keys()
    pipe = sync.pipeline(transaction=False)
    for i in range(records):  # the orders as the pipeline leaves them: the claim reads them
        order = _order(i)
        pipe.hset(keys.order(order.order_id), mapping={"s": COMPLETED, "d": encode_order(order)})
    pipe.execute()
    before = int(sync.info("memory")["used_memory"])
    client: aredis.Redis = async_client(url)
    try:
        store = NotificationStore(client, AsyncScripts.register(client), keys)
        claim_us, settle_us, made = await _first_attempts(store, sync, records, batch)
        used = int(sync.info("memory")["used_memory"]) - before
        pages = await _pages(store, sync, made)
        lookup_us = await _lookups(store, sync, made)
    finally:
        await client.aclose()
    return {
        "records": records,
        "batch": batch,
        "customers": (records + ORDERS_PER_CUSTOMER - 1) // ORDERS_PER_CUSTOMER,
        "claim_us_per_record": round(claim_us, 2),
        "settle_us_per_record": round(settle_us, 2),
        "page_us": pages,
        "lookup_us_per_record": round(lookup_us, 1),
        "redis_bytes_per_record": round(used / records, 1),
    }


def run(records: int, batch: int) -> dict[str, Any]:
    """Measure on a private server of our own; the result figures."""
    with private_server() as url:
        return asyncio.run(_measure(url, records, batch))


def main() -> None:
    """Parse options, run, print and save."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000, help="first attempts to make")
    parser.add_argument("--batch", type=int, default=200, help="records per claim and settle")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_RECORDS} records")
    parser.add_argument("--output", type=Path, help="where the JSON goes (default: results/)")
    args = parser.parse_args()
    records = QUICK_RECORDS if args.quick else args.records
    result = run(records, args.batch)
    save(
        "notifications",
        {"benchmark": "notifications", "machine": machine(), "result": result},
        args.output,
    )


if __name__ == "__main__":
    main()
