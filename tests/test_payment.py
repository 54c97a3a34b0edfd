"""The simulated gateway (SPEC §3.1) and the payment stage: idempotency, determinism, in-flight."""

from __future__ import annotations

import asyncio
import csv
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest
import redis

from streamproc import orderview, rawpipe
from streamproc.connection import async_client, sync_client
from streamproc.context import StageContext
from streamproc.export import iter_orders
from streamproc.gateway import (
    Charge,
    ChargeResult,
    PaymentGateway,
    idempotency_key,
    order_results,
    parse_record,
    payment_note,
    read_payment_note,
    simulated_outcome,
    successful_charges,
)
from streamproc.ingest import ingest_file
from streamproc.keys import Keys
from streamproc.lua import AsyncScripts
from streamproc.models import Line, Order, encode_order
from streamproc.orderview import PaymentRecord
from streamproc.runloop import RunLoop
from streamproc.settings import Settings
from streamproc.stages import load_handler
from streamproc.stock import set_stock
from streamproc.transport import Decision, StageStream, ensure_groups, ensure_groups_sync

KEYS = Keys()
ORDER_COLUMNS = (
    "order_id",
    "customer_id",
    "customer_name",
    "product_sku",
    "quantity",
    "unit_price",
    "order_date",
)
T = TypeVar("T")


def charges_of(r: redis.Redis, order_id: str, attempt: int = 1) -> int:
    """Successful charges of an order's attempts 1..attempt, counted from the gateway's ledger."""
    created = int(r.hget(KEYS.order(order_id), "c") or 0)
    return successful_charges(order_results(r, KEYS, order_id, created, attempt))


def run_with_gateway(url: str, body: Callable[[Callable[..., PaymentGateway]], Awaitable[T]]) -> T:
    """Run `body(make_gateway)` on a fresh event loop with one async client."""

    async def main() -> T:
        client = async_client(url)
        scripts = AsyncScripts.register(client)

        def make(seed: int = 1, rate: float = 0.5) -> PaymentGateway:
            return PaymentGateway(scripts, KEYS, seed, rate, latency_ms=0)

        try:
            return await body(make)
        finally:
            await client.aclose()

    return asyncio.run(main())


def test_same_key_returns_first_result_and_charges_once(redis_url: str, r: redis.Redis) -> None:
    approved_first = Charge("pay:A1", "A1", 1999, "USD")
    declined_first = Charge("pay:D1", "D1", 700, "EUR")

    async def body(make: Callable[..., PaymentGateway]) -> None:
        approving, declining = make(seed=1, rate=1.0), make(seed=2, rate=0.0)
        (a1,) = await approving.charge([approved_first])
        (d1,) = await declining.charge([declined_first])
        assert a1.approved and not d1.approved
        assert (a1.amount_cents, a1.currency) == (1999, "USD")
        assert (d1.amount_cents, d1.currency) == (700, "EUR")
        # Replays through gateways that would now decide the other way (other seed and rate):
        # the first recorded result wins, recorded time included.
        assert await declining.charge([approved_first]) == [a1]
        assert await approving.charge([declined_first]) == [d1]
        assert await make(seed=99, rate=0.5).charge([approved_first, declined_first]) == [a1, d1]

    run_with_gateway(redis_url, body)
    assert r.hlen(KEYS.gateway_ledger) == 2
    assert charges_of(r, "A1") == 1
    assert charges_of(r, "D1") == 0
    stats = r.hgetall(KEYS.gateway_stats)
    assert (stats["calls"], stats["recorded"]) == ("6", "2")


def test_same_key_twice_in_one_batch_charges_once(redis_url: str, r: redis.Redis) -> None:
    charge = Charge("pay:B1", "B1", 100, "USD")

    async def body(make: Callable[..., PaymentGateway]) -> None:
        results = await make(rate=1.0).charge([charge, charge, charge])
        assert len(set(results)) == 1 and results[0].approved

    run_with_gateway(redis_url, body)
    assert r.hlen(KEYS.gateway_ledger) == 1
    assert charges_of(r, "B1") == 1


def test_outcomes_are_deterministic_per_seed_and_honour_the_rate(
    redis_url: str, r: redis.Redis
) -> None:
    keys = [idempotency_key(f"det-{i}", 1) for i in range(2000)]
    charges = [Charge(key, key[4:], 1000, "USD") for key in keys]

    async def outcomes(make: Callable[..., PaymentGateway], seed: int) -> list[bool]:
        return [res.approved for res in await make(seed=seed, rate=0.8).charge(charges)]

    first = run_with_gateway(redis_url, lambda make: outcomes(make, 42))
    r.flushall()  # a fresh gateway ledger: the outcome must come from (seed, key) alone
    second = run_with_gateway(redis_url, lambda make: outcomes(make, 42))
    r.flushall()
    other_seed = run_with_gateway(redis_url, lambda make: outcomes(make, 43))

    assert first == second
    assert first == [simulated_outcome(42, key, 0.8) for key in keys]
    assert first != other_seed
    assert 1500 <= sum(first) <= 1700, sum(first)
    assert 1500 <= sum(other_seed) <= 1700, sum(other_seed)
    assert successful_charges(r.hvals(KEYS.gateway_ledger)) == sum(other_seed)
    assert not any(simulated_outcome(42, key, 0.0) for key in keys)
    assert all(simulated_outcome(42, key, 1.0) for key in keys)


def test_idempotency_key_names_the_order_and_the_resubmission() -> None:
    assert idempotency_key("1001", 1) == "pay:1001"
    assert idempotency_key("1001", 2) == "pay:1001:2"


# -- the payment stage, in-process ----------------------------------------------------------


def stock_of(r: redis.Redis, sku: str) -> tuple[int, ...]:
    """(available, reserved, committed) of a SKU."""
    return tuple(
        int(r.hget(KEYS.stock(c), sku) or -1) for c in ("available", "reserved", "committed")
    )


def write_orders(path: Path, count: int, sku: str) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(ORDER_COLUMNS)
        for i in range(count):
            writer.writerow([f"P{i:05d}", 1 + i % 50, "Payer", sku, 1, "12.34", "2025-11-10"])
    return path


def import_orders(url: str, path: Path, sku: str, stock: int) -> int:
    client = sync_client(url)
    try:
        set_stock(client, KEYS, sku, stock)
        ensure_groups_sync(client, KEYS)
        return ingest_file(client, KEYS, str(path), "USD").imported
    finally:
        client.close()


async def run_stage_until(
    ctx: StageContext,
    stage: str,
    done: Callable[[], Awaitable[bool]],
    *,
    concurrency: int,
    batch_size: int,
    claim_idle_ms: int = 60_000,
    timeout_s: float = 30,
) -> RunLoop:
    """Run one stage's RunLoop until `await done()`, then stop it and let it finish."""
    stream = StageStream(ctx.client, ctx.scripts, ctx.keys, stage, f"test-{stage}")
    loop = RunLoop(
        stream,
        load_handler(stage, ctx),
        concurrency=concurrency,
        batch_size=batch_size,
        block_ms=50,
        claim_idle_ms=claim_idle_ms,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    try:
        async with asyncio.timeout(timeout_s):
            while not await done():
                assert not task.done(), "the run loop ended by itself"
                await asyncio.sleep(0.02)
    finally:
        stop.set()
        await task
    assert loop.fatal is None
    return loop


def state_is(ctx: StageContext, state: str, count: int) -> Callable[[], Awaitable[bool]]:
    """A predicate: exactly `count` orders are in `state` (from the O(1) state counters)."""

    async def check() -> bool:
        return int(await ctx.client.hget(ctx.keys.state_counts, state) or 0) == count

    return check


def drained(ctx: StageContext, stage: str) -> Callable[[], Awaitable[bool]]:
    """A predicate: the stage's group has nothing unread and nothing pending."""

    async def check() -> bool:
        (group,) = await ctx.client.xinfo_groups(ctx.keys.stream(stage))
        return int(group["lag"]) == 0 and int(group["pending"]) == 0

    return check


def test_payment_stage_keeps_hundreds_of_slow_calls_in_flight(
    redis_url: str, r: redis.Redis, tmp_path: Path
) -> None:
    total = 1000
    path = write_orders(tmp_path / "orders.csv", total, "SKU-P")
    assert import_orders(redis_url, path, "SKU-P", total) == total
    settings = Settings(
        redis_url=redis_url,
        home_dir=tmp_path,
        payment_seed=3,
        payment_success_rate=1.0,
        payment_latency_ms=200,
    )

    async def main() -> tuple[RunLoop, PaymentGateway]:
        client = async_client(redis_url)
        try:
            ctx = StageContext.build(settings, client)
            await run_stage_until(
                ctx,
                "reserve",
                state_is(ctx, "reserved", total),
                concurrency=400,
                batch_size=100,
            )
            assert ctx.gateway.peak_in_flight == 0
            payment = await run_stage_until(
                ctx,
                "payment",
                state_is(ctx, "reserved", 0),
                concurrency=400,
                batch_size=50,
            )
            return payment, ctx.gateway
        finally:
            await client.aclose()

    loop, gateway = asyncio.run(main())
    assert gateway.peak_in_flight >= 200, gateway.peak_in_flight
    assert gateway.peak_in_flight <= 400  # the run loop's bound holds
    assert gateway.in_flight == 0
    assert loop.outcomes["completed"] == total
    counts = r.hgetall(KEYS.state_counts)
    assert (int(counts["completed"]), int(counts["reserved"]), int(counts["pending"])) == (
        total,
        0,
        0,
    )
    assert stock_of(r, "SKU-P") == (0, 0, total)  # settled by the payment stage itself
    # The stage records each result in its order's ledger bucket (none in the old single hash).
    buckets = list(r.scan_iter(match=KEYS.gateway_bucket("*")))
    assert successful_charges(v for b in buckets for v in r.hvals(b)) == total
    assert not r.exists(KEYS.gateway_ledger)
    assert r.xinfo_groups(KEYS.stream("payment"))[0]["pending"] == 0
    assert r.xlen(KEYS.sources("notify")[0]) == total
    assert r.xlen(KEYS.stream("notify")) == 0  # one entry per finished order, read by both
    assert r.xlen(KEYS.stream("finalize")) == 0


def test_replayed_payment_message_neither_charges_nor_transitions_again(
    redis_url: str, r: redis.Redis, tmp_path: Path
) -> None:
    path = write_orders(tmp_path / "orders.csv", 3, "SKU-R")
    assert import_orders(redis_url, path, "SKU-R", 10) == 3
    settings = Settings(redis_url=redis_url, home_dir=tmp_path, payment_success_rate=1.0)
    payment_stream = KEYS.stream("payment")

    async def main() -> RunLoop:
        client = async_client(redis_url)
        try:
            ctx = StageContext.build(settings, client)
            await run_stage_until(
                ctx,
                "reserve",
                state_is(ctx, "reserved", 3),
                concurrency=10,
                batch_size=10,
            )
            await run_stage_until(
                ctx,
                "payment",
                state_is(ctx, "completed", 3),
                concurrency=10,
                batch_size=10,
            )
            # Replay: the very same fields re-added by hand, as a duplicate delivery would be.
            (_, fields), *_ = await client.xrange(payment_stream, count=1)
            assert fields[b"o"] == b"P00000"
            await client.xadd(payment_stream, fields)
            replayed = await run_stage_until(
                ctx,
                "payment",
                drained(ctx, "payment"),
                concurrency=10,
                batch_size=10,
            )
            return replayed
        finally:
            await client.aclose()

    replayed = asyncio.run(main())
    # The replay went through the gateway (same key, same first result) and the settlement (the
    # reservation already committed: nothing moves) and was fenced at commit.
    assert dict(replayed.outcomes) == {"stale": 1}
    assert charges_of(r, "P00000") == 1
    assert r.hget(KEYS.gateway_stats, "recorded") == "3"
    assert stock_of(r, "SKU-R") == (7, 0, 3)
    order = r.hgetall(KEYS.order("P00000"))
    assert order["s"] == "completed"
    assert re.fullmatch(r"p0r[0-9]+c[0-9]+", order["h"]), order  # completed once
    assert int(r.hget(KEYS.state_counts, "completed")) == 3
    assert r.xlen(KEYS.sources("notify")[0]) == 3  # no second message for notify
    assert r.xinfo_groups(payment_stream)[0]["pending"] == 0  # the replay was acked


def test_commit_of_a_replayed_decision_returns_stale(redis_url: str, r: redis.Redis) -> None:
    """StageStream.commit itself: 1 for the first message, 0 (acked only) for its duplicate."""
    payload = encode_order(
        Order("C1", 7, "Carol", "USD", "2025-11-10T00:00:00Z", [Line("S", "", 1, 100)])
    )
    r.hset(
        KEYS.order("C1"),
        mapping={
            "s": "reserved",
            "a": "1",
            "k": "payment",
            "d": payload,
            "h": "pending@1;reserved@2",
        },
    )
    r.hset(KEYS.state_counts, "reserved", 1)
    fields = {"o": "C1", "a": "1", "s": "reserved", "d": payload}

    async def main() -> list[list[int]]:
        client = async_client(redis_url)
        try:
            ctx = StageContext.build(Settings(redis_url=redis_url), client)
            await ensure_groups(client, KEYS)
            ids = [await client.xadd(KEYS.stream("payment"), fields) for _ in range(2)]
            stream = StageStream(client, ctx.scripts, KEYS, "payment", "c1")
            batch = await stream.read(10, None)
            assert [m.msg_id for m in batch] == ids
            return [(await stream.commit([Decision(m, "completed", "ok")])).results for m in batch]
        finally:
            await client.aclose()

    assert asyncio.run(main()) == [[1], [0]]
    order = r.hgetall(KEYS.order("C1"))
    assert (order["s"], order["k"], order["p"]) == ("completed", "", "ok")
    # Completed once; the old history recoded, in absolute ms as the hash has no c (lib/order.lua).
    assert re.fullmatch(r"p=1r=2c=[0-9]+", order["h"]), order
    assert r.hgetall(KEYS.state_counts) == {"reserved": "0", "completed": "1"}
    assert r.xlen(KEYS.stream("snapshot")) == 1  # the one entry notify and snapshot both read
    assert r.xinfo_groups(KEYS.stream("payment"))[0]["pending"] == 0


def test_slow_payments_are_not_reclaimed_by_their_own_consumer(
    redis_url: str, r: redis.Redis, tmp_path: Path
) -> None:
    # The gateway is slower than the claim idle time: the loop's own reclaimer sees its in-flight
    # entries as idle. They must not be handled a second time while still in flight.
    total = 60
    path = write_orders(tmp_path / "orders.csv", total, "SKU-S")
    assert import_orders(redis_url, path, "SKU-S", total) == total
    settings = Settings(
        redis_url=redis_url, home_dir=tmp_path, payment_success_rate=1.0, payment_latency_ms=400
    )

    async def main() -> RunLoop:
        client = async_client(redis_url)
        try:
            ctx = StageContext.build(settings, client)
            await run_stage_until(
                ctx, "reserve", state_is(ctx, "reserved", total), concurrency=100, batch_size=20
            )
            paid_and_settled = state_is(ctx, "completed", total)

            async def paid_then_a_reclaim_round() -> bool:
                if not await paid_and_settled():
                    return False
                await asyncio.sleep(0.5)  # the reclaimer runs a few more times meanwhile
                return True

            return await run_stage_until(
                ctx,
                "payment",
                paid_then_a_reclaim_round,
                concurrency=100,
                batch_size=20,
                claim_idle_ms=100,
            )
        finally:
            await client.aclose()

    loop = asyncio.run(main())
    assert dict(loop.outcomes) == {"completed": total}
    assert r.hget(KEYS.gateway_stats, "calls") == str(total)
    assert r.xlen(KEYS.sources("notify")[0]) == total


def test_commit_that_fails_half_way_keeps_what_it_applied_counted_and_acked(
    redis_url: str, r: redis.Redis
) -> None:
    """An order key of the wrong type stops the batch there: the orders before it stay applied,
    acked and counted (so a retry finds them stale, not uncounted); the rest is untouched."""
    orders = [
        Order(f"W{i}", 7, "Walt", "USD", "2025-11-10T00:00:00Z", [Line("S", "", 1, 100)])
        for i in range(3)
    ]
    for order in orders:
        fields = {"s": "reserved", "a": "1", "k": "payment", "d": encode_order(order), "h": "x"}
        if order.order_id == "W1":
            r.set(KEYS.order("W1"), "not a hash")
        else:
            r.hset(KEYS.order(order.order_id), mapping=fields)
    r.hset(KEYS.state_counts, "reserved", 3)

    async def main() -> str:
        client = async_client(redis_url)
        try:
            ctx = StageContext.build(Settings(redis_url=redis_url), client)
            await ensure_groups(client, KEYS)
            for order in orders:
                entry = {"o": order.order_id, "a": "1", "s": "reserved", "d": encode_order(order)}
                await client.xadd(KEYS.stream("payment"), entry)
            stream = StageStream(client, ctx.scripts, KEYS, "payment", "c1")
            batch = await stream.read(10, None)
            try:
                await stream.commit([Decision(m, "completed", "ok") for m in batch])
            except redis.ResponseError as exc:
                return str(exc)
            return "no error"
        finally:
            await client.aclose()

    assert "WRONGTYPE" in asyncio.run(main())
    assert r.hget(KEYS.order("W0"), "s") == "completed"
    assert r.hget(KEYS.order("W2"), "s") == "reserved"
    assert r.hgetall(KEYS.state_counts) == {"reserved": "2", "completed": "1"}
    assert r.xlen(KEYS.sources("notify")[0]) == 1
    assert r.xinfo_groups(KEYS.stream("payment"))[0]["pending"] == 2  # W1 and W2 stay pending


def test_order_view_reads_the_payment_noted_on_the_order_in_one_round_trip(
    redis_url: str, r: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The payment stage notes the gateway's outcome and time on the order (field p): the view
    shows exactly the ledger's record from the order hash alone; without the time (a note
    written before it was kept) the view reads the ledger as it did."""
    total = 60
    path = write_orders(tmp_path / "orders.csv", total, "SKU-V")
    assert import_orders(redis_url, path, "SKU-V", total) == total
    settings = Settings(
        redis_url=redis_url, home_dir=tmp_path, payment_seed=5, payment_success_rate=0.5
    )
    round_trips: list[int] = []

    async def counted(client: object, commands: list[tuple[object, ...]]) -> list[object]:
        round_trips.append(len(commands))
        return await rawpipe.pipelined(client, commands)  # type: ignore[arg-type]

    monkeypatch.setattr(orderview, "pipelined", counted)

    async def views() -> dict[str, tuple[PaymentRecord, int]]:
        client = async_client(redis_url)
        try:
            found = {}
            for i in range(total):
                round_trips.clear()
                stored = await orderview.load_order(client, KEYS, f"P{i:05d}")
                assert stored is not None
                found[f"P{i:05d}"] = (stored.payment, len(round_trips))
            return found
        finally:
            await client.aclose()

    async def main() -> dict[str, tuple[PaymentRecord, int]]:
        client = async_client(redis_url)
        try:
            ctx = StageContext.build(settings, client)
            await run_stage_until(
                ctx, "reserve", state_is(ctx, "reserved", total), concurrency=20, batch_size=7
            )
            await run_stage_until(
                ctx, "payment", drained(ctx, "payment"), concurrency=20, batch_size=7
            )
        finally:
            await client.aclose()
        return await views()

    seen = asyncio.run(main())
    outcomes = set()
    for order_id, (payment, trips) in seen.items():
        created = int(r.hget(KEYS.order(order_id), "c"))
        (record,) = order_results(r, KEYS, order_id, created, 1)
        assert record is not None
        ledger = parse_record(record)
        assert payment == PaymentRecord(
            "ok" if ledger.approved else "declined",
            ledger.amount_cents,
            ledger.currency,
            ledger.recorded_ms,
            int(ledger.approved),
        ), order_id
        assert trips == 1, order_id  # the order hash alone
        outcomes.add(payment.outcome)
    assert outcomes == {"ok", "declined"}
    # The export's payment column is the outcome alone.
    client = sync_client(redis_url)
    try:
        exported = {o.order_id: o.payment for o in iter_orders(client, KEYS)}
    finally:
        client.close()
    assert exported == {oid: payment.outcome for oid, (payment, _) in seen.items()}

    # A note without the gateway's time: the same view, from the ledger (one more round trip).
    for order_id in seen:
        r.hset(KEYS.order(order_id), "p", seen[order_id][0].outcome)
    assert {oid: payment for oid, (payment, _) in asyncio.run(views()).items()} == {
        oid: payment for oid, (payment, _) in seen.items()
    }
    assert set(round_trips) == {1} and len(round_trips) == 2


def test_payment_note_keeps_the_outcome_and_the_gateway_time_after_creation() -> None:
    approved, declined = (
        ChargeResult(True, 1250, "USD", 1_000_186),
        ChargeResult(False, 1250, "USD", 999_995),
    )
    assert payment_note(approved, 1_000_000) == "ok@186"
    assert payment_note(declined, 1_000_000) == "declined@-5"  # the gateway's clock behind
    assert payment_note(approved, 0) == "ok"  # creation unknown: the outcome alone
    assert read_payment_note("ok@186", 1_000_000) == ("ok", 1_000_186)
    assert read_payment_note("declined@-5", 1_000_000) == ("declined", 999_995)
    # Anything else is read as it is, with no time: the view then reads the ledger.
    assert read_payment_note("ok", 1_000_000) == ("ok", None)
    assert read_payment_note("ok@186", 0) == ("ok", None)
    assert read_payment_note("out_of_stock:SKU-X", 1_000_000) == ("out_of_stock:SKU-X", None)
    assert read_payment_note("ok@x", 1_000_000) == ("ok@x", None)
    assert read_payment_note("", 1_000_000) == ("", None)
