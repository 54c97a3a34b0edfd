"""Reservation records and gateway results are kept in bucket hashes by the order's creation ms.

Records written before buckets stay in the old single hashes: the scripts still find them there,
so an order reserved or charged before an upgrade is settled, and never charged, a second time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis

from streamproc.analytics.facts import row_of_entry
from streamproc.connection import async_client
from streamproc.gateway import Charge, PaymentGateway, parse_record
from streamproc.keys import RECORD_BUCKETS, Keys, bucket_keys, record_bucket
from streamproc.lua import AsyncScripts
from streamproc.models import Line, Order, encode_order
from streamproc.stock import StockLedger, StockRequest, set_stock
from streamproc.transport import parse_entry

KEYS = Keys()
CREATED_MS = 1_795_637_643_137
T = TypeVar("T")


def with_scripts(url: str, work: Callable[[AsyncScripts], Awaitable[T]]) -> T:
    """Run `work` with the scripts registered on a fresh client of the test server."""

    async def main() -> T:
        client = async_client(url)
        try:
            return await work(AsyncScripts.register(client))
        finally:
            await client.aclose()

    return asyncio.run(main())


def stock_of(r: redis.Redis, sku: str) -> tuple[int, int, int]:
    """(available, reserved, committed) units of a SKU."""
    cols = ("available", "reserved", "committed")
    return tuple(int(r.hget(KEYS.stock(c), sku) or 0) for c in cols)  # type: ignore[return-value]


def test_a_bucket_is_the_creation_ms_and_a_slice_of_the_order_id() -> None:
    buckets = {record_bucket(CREATED_MS, f"ORD-{i}") for i in range(2000)}
    assert buckets == {f"{CREATED_MS}:{n}" for n in range(RECORD_BUCKETS)}
    assert record_bucket(CREATED_MS, "ORD-1") == record_bucket(CREATED_MS, "ORD-1")
    assert record_bucket(CREATED_MS + 1, "ORD-1").startswith(f"{CREATED_MS + 1}:")
    assert record_bucket(0, "ORD-1") == ""  # unknown creation time: the old single hash
    # A batch's distinct bucket keys, and each item's KEYS index (the old hash's for "").
    keys, slots = bucket_keys(["a", "", "b", "a"], KEYS.reservation_bucket, 5, 6)
    assert keys == [KEYS.reservation_bucket("a"), KEYS.reservation_bucket("b")]
    assert slots == [6, 5, 7, 6]
    assert KEYS.reservation_bucket("") == KEYS.reservations
    assert KEYS.gateway_bucket("") == KEYS.gateway_ledger


def test_stage_entries_carry_the_creation_ms_and_entries_written_before_do_not() -> None:
    order = Order("O1", 7, "Pat", "USD", "2025-11-10T00:00:00Z", [Line("S", "", 1, 1250)])
    base = [b"o", b"O1", b"a", b"2", b"s", b"paid", b"d", encode_order(order)]
    now = parse_entry(b"1-1", [*base, b"c", str(CREATED_MS).encode()])
    assert (now.order_id, now.attempt, now.state, now.created_ms) == ("O1", 2, "paid", CREATED_MS)
    assert now.bucket == record_bucket(CREATED_MS, "O1") and not now.error
    before = parse_entry(b"1-2", base)
    assert before.created_ms == 0 and before.bucket == "" and not before.error
    # A terminal entry of an order that was terminal before: r=1 after c, for the snapshot too.
    done = [*base[:5], b"completed", *base[6:], b"c", b"5"]
    terminal = parse_entry(b"1-3", [*done, b"r", b"1"])
    assert terminal.prior and terminal.created_ms == 5
    # The snapshot's rows: a completion marked b=1 waits for the boards; one without the mark was
    # counted as an earlier version committed it; r and b in either combination.
    for tail, prior, counted in (
        ([b"r", b"1"], True, True),
        ([], False, True),
        ([b"b", b"1"], False, False),
        ([b"r", b"1", b"b", b"1"], True, False),
    ):
        row, on_boards = row_of_entry(b"1-3", [*done, *tail]) or (b"", None)
        assert (b'"prior":%s' % (b"true" if prior else b"false")) in row
        assert on_boards is counted
        message = parse_entry(b"1-3", [*done, *tail])
        assert (message.prior, message.boards_pending) == (prior, not counted)
    # Other terminal states never were on the boards.
    failed = [*base[:5], b"failed", *base[6:], b"c", b"5"]
    assert (row_of_entry(b"1-5", failed) or (b"", None))[1] is False
    assert parse_entry(b"1-4", [*base, b"c", b"x"]).error  # a creation time that is no number


def test_records_written_before_buckets_are_settled_once(redis_url: str, r: redis.Redis) -> None:
    set_stock(r, KEYS, "SKU-U", 10)
    old, new = StockRequest("L1#1", {"SKU-U": 2}), StockRequest("N1#1", {"SKU-U": 3})
    old_later = StockRequest("L1#1", {"SKU-U": 2}, record_bucket(CREATED_MS, "L1"))
    new.bucket = record_bucket(CREATED_MS, "N1")

    async def work(scripts: AsyncScripts) -> tuple[list[str], ...]:
        ledger = StockLedger(scripts, KEYS, "reject", 0)
        reserved = await ledger.reserve([old, new])  # L1 as before buckets: the old hash
        # After the upgrade, L1's entry carries its creation ms: its record is found all the same.
        replayed = await ledger.reserve([old_later, new])
        committed = await ledger.settle([old_later, new], commit=True)
        again = await ledger.settle([old_later, new], commit=True)
        return reserved, replayed, committed, again

    reserved, replayed, committed, again = with_scripts(redis_url, work)
    assert reserved == replayed == ["r", "r"]
    assert committed == again == ["c", "c"]
    assert stock_of(r, "SKU-U") == (5, 0, 5)  # each order's units moved once
    assert r.hgetall(KEYS.reservations) == {"L1#1": "r"}  # the old record, now shadowed
    assert r.hget(KEYS.reservation_bucket(old_later.bucket), "L1#1") == "c"
    assert r.hget(KEYS.reservation_bucket(new.bucket), "N1#1") == "c"


def test_a_result_recorded_before_buckets_is_returned_not_charged_again(
    redis_url: str, r: redis.Redis
) -> None:
    bucket = record_bucket(CREATED_MS, "G1")

    async def work(scripts: AsyncScripts) -> list[bool]:
        approving = PaymentGateway(scripts, KEYS, 1, 1.0, latency_ms=0)
        declining = PaymentGateway(scripts, KEYS, 1, 0.0, latency_ms=0)
        (first,) = await approving.charge([Charge("pay:G1", "G1", 500, "EUR")])
        # Retried after the upgrade, with a gateway that would decline: the first result stands.
        (later,) = await declining.charge([Charge("pay:G1", "G1", 500, "EUR", bucket)])
        (fresh,) = await declining.charge([Charge("pay:G2", "G2", 500, "EUR", bucket)])
        return [first.approved, later.approved, fresh.approved, first == later]

    assert with_scripts(redis_url, work) == [True, True, False, True]
    assert list(r.hgetall(KEYS.gateway_ledger)) == ["pay:G1"]
    assert list(r.hgetall(KEYS.gateway_bucket(bucket))) == ["pay:G2"]
    assert not parse_record(r.hget(KEYS.gateway_bucket(bucket), "pay:G2") or "").approved
    assert r.hget(KEYS.gateway_stats, "recorded") == "2"


def test_one_import_batch_fills_compact_buckets(redis_url: str, r: redis.Redis) -> None:
    """500 orders created in one ms (one ingest batch): 16 buckets, each a listpack."""
    set_stock(r, KEYS, "SKU-B", 10_000)
    requests = [
        StockRequest(f"B{i}#1", {"SKU-B": 1}, record_bucket(CREATED_MS, f"B{i}"))
        for i in range(500)
    ]

    async def work(scripts: AsyncScripts) -> list[str]:
        ledger = StockLedger(scripts, KEYS, "reject", 0)
        out: list[str] = []
        for start in range(0, 500, 100):  # the consumers' batches
            out += await ledger.reserve(requests[start : start + 100])
        return out

    assert with_scripts(redis_url, work) == ["r"] * 500
    buckets = list(r.scan_iter(match=KEYS.reservation_bucket("*")))
    assert len(buckets) == RECORD_BUCKETS
    assert sum(r.hlen(b) for b in buckets) == 500
    assert all(r.object("encoding", b) == "listpack" for b in buckets)
    assert stock_of(r, "SKU-B") == (9_500, 500, 0)
