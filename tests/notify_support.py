"""Helpers of the notification tests: the store in-process, and the records as stored."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis

from streamproc.connection import async_client
from streamproc.keys import Keys
from streamproc.lua import AsyncScripts
from streamproc.notification_store import (
    COMBINATIONS,
    LEASES_PIN,
    SENT_STREAMS,
    NotificationStore,
)
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


def leases(r: redis.Redis) -> dict[str, str]:
    """The leases hash without its pin: record id → lease."""
    found: dict[str, str] = r.hgetall(KEYS.notification_leases)
    return {record_id: lease for record_id, lease in found.items() if record_id != LEASES_PIN}


def index_entries(r: redis.Redis) -> dict[str, tuple[tuple[str, str, str], int]]:
    """Every index entry, set or sent stream: record id → ((type, channel, status), score).
    Fails when a record is in two."""
    indexed: dict[str, tuple[tuple[str, str, str], int]] = {}

    def add(record_id: str, combination: tuple[str, str, str], score: int) -> None:
        assert record_id not in indexed, f"{record_id} is in two indexes"
        indexed[record_id] = (combination, score)

    for combination in COMBINATIONS:
        key = KEYS.notification_index(*combination)
        for record_id, score in r.zrange(key, 0, -1, withscores=True):
            add(record_id, combination, int(score))
    for kind, channel in SENT_STREAMS:
        for entry_id, fields in r.xrange(KEYS.notification_sent_stream(kind, channel)):
            ms, seq = entry_id.split("-")
            add(
                f"{fields['i']}:{kind}:{channel}",
                (kind, channel, "sent"),
                int(ms) * 1000 + int(seq),
            )
    return indexed


def all_records(r: redis.Redis) -> dict[str, Notification]:
    """Every stored record by id (in the hash, or in a sent stream's entry: never both), with its
    creation time from the index it is in."""
    records = {
        record_id: decode_record(record_id, raw.encode())
        for record_id, raw in r.hgetall(KEYS.notifications).items()
    }
    for kind, channel in SENT_STREAMS:
        for _, fields in r.xrange(KEYS.notification_sent_stream(kind, channel)):
            record_id = f"{fields['i']}:{kind}:{channel}"
            assert record_id not in records, f"{record_id} is in the hash and a sent stream"
            records[record_id] = decode_record(record_id, fields["r"].encode())
    for record_id, (_, score) in index_entries(r).items():
        records[record_id].created_ms = created_ms_of(score)
    return records


def assert_indexes_agree(r: redis.Redis) -> None:
    """Each record is in exactly the index (set or sent stream) of its type, channel and status,
    and in its customer's set with the same score; each pending record is in the schedule; the
    sent streams' days hash counts their entries; nothing else is anywhere."""
    records = all_records(r)
    entries = index_entries(r)
    indexed = {record_id: combination for record_id, (combination, _) in entries.items()}
    assert set(indexed) == set(records), set(indexed) ^ set(records)
    for record_id, (_, score) in entries.items():
        customer_key = KEYS.notification_customer(records[record_id].customer_id)
        assert r.zscore(customer_key, record_id) == score, record_id
    days: dict[str, int] = {}
    for kind, channel in SENT_STREAMS:
        for entry_id, _ in r.xrange(KEYS.notification_sent_stream(kind, channel)):
            day = f"{kind}:{channel}:{int(entry_id.split('-')[0]) // 86_400_000}"
            days[day] = days.get(day, 0) + 1
    assert {k: int(v) for k, v in r.hgetall(KEYS.notification_sent_days).items()} == days
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
