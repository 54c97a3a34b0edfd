"""Helpers of the notification tests: the store in-process, and the records as stored."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis

from streamproc.connection import async_client
from streamproc.keys import Keys
from streamproc.lua import AsyncScripts
from streamproc.notification_store import COMBINATIONS, NotificationStore
from streamproc.notifications import Notification, created_ms_of, decode_record

KEYS = Keys()
T = TypeVar("T")


def with_store(url: str, work: Callable[[NotificationStore], Awaitable[T]]) -> T:
    """Run `work(store)` on a fresh asyncio client of the server at `url`."""

    async def main() -> T:
        client = async_client(url)
        try:
            return await work(NotificationStore(client, AsyncScripts.register(client), KEYS))
        finally:
            await client.aclose()

    return asyncio.run(main())


def all_records(r: redis.Redis) -> dict[str, Notification]:
    """Every stored record by id, with its creation time from the index it is in."""
    records = {
        record_id: decode_record(record_id, raw.encode())
        for record_id, raw in r.hgetall(KEYS.notifications).items()
    }
    for combination in COMBINATIONS:
        for record_id, score in r.zrange(
            KEYS.notification_index(*combination), 0, -1, withscores=True
        ):
            records[record_id].created_ms = created_ms_of(score)
    return records


def assert_indexes_agree(r: redis.Redis) -> None:
    """Each record is in exactly the index of its type, channel and status, and in its
    customer's set; each pending record is in the schedule; nothing else is anywhere."""
    records = all_records(r)
    indexed: dict[str, tuple[str, str, str]] = {}
    for combination in COMBINATIONS:
        for record_id in r.zrange(KEYS.notification_index(*combination), 0, -1):
            assert record_id not in indexed, f"{record_id} is in two indexes"
            indexed[record_id] = combination
    assert set(indexed) == set(records), set(indexed) ^ set(records)
    for record_id, record in records.items():
        assert indexed[record_id] == (record.notification_type, record.channel, record.status)
    customers: dict[str, str] = {}
    for key in r.scan_iter(match=KEYS.notification_customer_prefix + "*"):
        customer = key.removeprefix(KEYS.notification_customer_prefix)
        for record_id in r.zrange(key, 0, -1):
            customers[record_id] = customer
    assert customers == {rid: str(rec.customer_id) for rid, rec in records.items()}
    scheduled = set(r.zrange(KEYS.notification_schedule, 0, -1))
    assert scheduled == {rid for rid, rec in records.items() if rec.status == "pending"}
