"""Crashes at every stage and fault point, poison entries and dead letters (SPEC §3.2, §4).

A consumer SIGKILLed by the fault hook (STREAMPROC_FAULT=<stage>:<point>) is replaced by a fresh
one under a new name; the replacement reclaims the dead one's entries and the run must end with
every invariant intact. Poison orders and undecodable entries go to the dead-letter stream with
their stage, original id, delivery count and error, and `dlq retry` re-drives them.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from consumers.notify import NotifyHandler
from streamproc.connection import async_client
from streamproc.context import StageContext
from streamproc.ingest import ingest_file
from streamproc.keys import STAGES, Keys, record_bucket
from streamproc.models import Line, Order, encode_order
from streamproc.notifications import new_id
from streamproc.runloop import Handler, RunLoop
from streamproc.settings import Settings
from streamproc.transport import Decision, Message, StageStream, ensure_groups_sync
from streamproc.workflow import DRAIN_ONLY
from tests.earlier_version import EARLIER_STATE_PATHS, leave_paid_or_declined
from tests.invariants import (
    assert_one_notification_line_per_record,
    assert_pipeline_invariants,
    assert_store_holds_each_once,
    dead_letters,
    state_path,
    write_products,
)
from tests.notify_support import all_records
from tests.support import (
    Fleet,
    cli,
    export,
    generated_orders,
    notification_lines,
    one_line,
    raw_boards,
    running_fleet,
    status_json,
    stock_show,
    write_orders,
)

KEYS = Keys()
POINTS = ("before_effect", "after_effect", "after_commit")
# The snapshot stage is a sink with its own loop and its own fault points.
SNAPSHOT_POINTS = ("mid_write", "before_register", "mid_boards")
FAULT_CASES = [(stage, point) for stage in STAGES if stage != "snapshot" for point in POINTS] + [
    ("snapshot", point) for point in SNAPSHOT_POINTS
]
ORDER_COUNT = 200
ORDERS_SEED = 2025
PAYMENT_SEED = 17
SUCCESS_RATE = 0.7
# The three SKU-G0x of generated_orders get less stock than their orders ask for (40-55 units).
LOW_STOCK = 25
CLAIM_IDLE_MS = 300
CLAIM_IDLE_STUB_MS = 100


@pytest.fixture
def fault_env(sp_env: dict[str, str]) -> dict[str, str]:
    return dict(
        sp_env,
        STREAMPROC_LOG_LEVEL="WARNING",
        STREAMPROC_PAYMENT_SUCCESS_RATE=str(SUCCESS_RATE),
        STREAMPROC_PAYMENT_SEED=str(PAYMENT_SEED),
        STREAMPROC_CLAIM_IDLE_MS=str(CLAIM_IDLE_MS),
        STREAMPROC_BATCH_SIZE="25",
        STREAMPROC_BLOCK_MS="100",  # a SIGTERMed consumer notices the stop this fast
    )


@pytest.fixture
def consumers(fault_env: dict[str, str], tmp_path: Path) -> Iterator[Fleet]:
    with running_fleet(fault_env, tmp_path) as running:
        yield running


@pytest.fixture(scope="module")
def orders_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    """The seeded 200-order CSV (over a third multi-line) and a catalogue short on three SKUs."""
    folder = tmp_path_factory.mktemp("orders")
    path, catalogue = generated_orders(folder / "orders.csv", ORDER_COUNT, seed=ORDERS_SEED)
    return path, {sku: LOW_STOCK if qty < 1000 else qty for sku, qty in catalogue.items()}


def victim_pending_orders(r: redis.Redis, stage: str, consumer: str) -> list[str]:
    """Order ids of the entries a (dead) consumer still owns."""
    stream = KEYS.sources(stage)[0]  # notify: the facts stream, where its work arrives
    rows = r.xpending_range(stream, stage, "-", "+", 10_000, consumername=consumer)
    out = []
    for row in rows:
        ((_, fields),) = r.xrange(stream, row["message_id"], row["message_id"])
        out.append(fields["o"])
    return out


def effect_applied(r: redis.Redis, stage: str, order_id: str) -> bool:
    """Whether `stage`'s own effect for this (first-attempt) order is already in Redis."""
    # The stock and the gateway keep an order's records in the bucket of its creation ms.
    bucket = record_bucket(int(r.hget(KEYS.order(order_id), "c") or 0), order_id)
    reservation = KEYS.reservation_bucket(bucket)
    if stage == "reserve":
        return r.hexists(reservation, f"{order_id}#1")
    if stage == "payment":
        return r.hexists(KEYS.gateway_bucket(bucket), f"pay:{order_id}")
    if stage == "finalize":
        return r.hget(reservation, f"{order_id}#1") == "c"
    if stage == "rollback":
        return r.hget(reservation, f"{order_id}#1") == "x"
    return any(key.startswith(f"{order_id}:") for key in all_records(r))


def assert_fault_point_reached(r: redis.Redis, stage: str, point: str, consumer: str) -> None:
    """Right after the kill: the victim's batch is still pending, with or without its effects."""
    if point == "after_commit":
        return  # its batch was committed and acked: nothing of it is left to look at
    if point == "mid_boards":
        # Registered and acked, its completions not yet all on the leaderboards.
        (name,) = r.hkeys(KEYS.leaderboard_pending)
        assert r.hexists(KEYS.snapshot_files, name)
        assert victim_pending_orders(r, stage, consumer) == []
        return
    owned = victim_pending_orders(r, stage, consumer)
    assert owned, f"{consumer} died owning nothing at {point}"
    if stage == "snapshot":
        # Written (before_register: the file is in place) but never registered.
        assert r.hlen(KEYS.snapshot_files) == 0, r.hkeys(KEYS.snapshot_files)
        return
    applied = [order_id for order_id in owned if effect_applied(r, stage, order_id)]
    if point == "before_effect":
        assert applied == [], f"effects applied before {point}: {applied}"
    else:
        assert applied, f"no effect of the dying batch was applied at {point}: {owned}"
    for order_id in owned:
        # Not committed: the order still waits for this stage (notify leaves the state alone).
        # An order never moved has no k: ingest leaves it out (its next stage is reserve).
        if stage != "notify":
            assert (r.hget(KEYS.order(order_id), "k") or "reserve") == stage, order_id


@pytest.mark.parametrize(("stage", "point"), FAULT_CASES)
def test_consumer_killed_at_fault_point_is_replaced_without_loss_or_repeat(
    stage: str,
    point: str,
    consumers: Fleet,
    orders_file: tuple[Path, dict[str, int]],
    r: redis.Redis,
    tmp_path: Path,
) -> None:
    env = consumers.env
    orders_csv, catalogue = orders_file
    cli(["stock", "load", str(write_products(tmp_path / "products.csv", catalogue))], env)
    ingested = json.loads(cli(["ingest", str(orders_csv), "--json"], env).stdout)
    assert (ingested["imported"], ingested["rejected"]) == (ORDER_COUNT, 0)
    if stage in DRAIN_ONLY:
        # Nothing feeds these stages now: their entries are what an earlier version left.
        leave_paid_or_declined(Settings.from_env(env))
        assert r.xlen(KEYS.stream(stage)) >= 10

    victim = f"victim-{stage}"
    doomed = consumers.spawn(stage, victim, STREAMPROC_FAULT=f"{stage}:{point}")
    for other in STAGES:
        if other != stage:
            consumers.spawn(other, f"steady-{other}")
    consumers.wait_killed(doomed)
    assert_fault_point_reached(r, stage, point, victim)

    consumers.spawn(stage, f"replacement-{stage}")
    consumers.drain(40)

    orders = assert_pipeline_invariants(
        env,
        {f"G{n:05d}" for n in range(ORDER_COUNT)},
        catalogue,
        seed=PAYMENT_SEED,
        success_rate=SUCCESS_RATE,
        paths=EARLIER_STATE_PATHS if stage in DRAIN_ONLY else None,
    )
    states = Counter(order["state"] for order in orders.values())
    # Both payment paths and the out-of-stock path were exercised.
    assert min(states["completed"], states["rolled_back"], states["failed"]) >= 10, states
    assert dead_letters(env) == []
    assert_one_notification_line_per_record(env, orders)
    # The victim's entries were all reclaimed by the replacement.
    owners = {c["name"]: c["pending"] for c in r.xinfo_consumers(KEYS.sources(stage)[0], stage)}
    assert owners.get(victim, 0) == 0, owners
    # Every terminal order is in the analytics store exactly once, with its final state.
    assert_store_holds_each_once(r, env, {oid: o["state"] for oid, o in orders.items()})
    if stage == "snapshot":
        # INV-D: the leaderboards are what a recomputation from that store gives, key for key.
        assert not r.exists(KEYS.leaderboard_pending)
        boards = raw_boards(r)
        assert boards["currencies"], boards
        assert json.loads(cli(["leaderboard", "rebuild", "--json"], env).stdout)["customers"] > 0
        assert raw_boards(r) == boards


# --- poison entries and the dlq commands -------------------------------------------------------


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_undecodable_entry_is_dead_lettered_at_once_and_purged(
    consumers: Fleet, r: redis.Redis
) -> None:
    env = consumers.env
    consumers.spawn("reserve", "reserve-1")
    consumers.wait_registered("reserve", 1)
    garbage_id = r.xadd(KEYS.stream("reserve"), {"o": "bogus", "a": "1", "d": "not-json"})
    wait_for(lambda: r.xlen(KEYS.dead_letters) > 0, 10, "the dead letter")

    (letter,) = dead_letters(env)
    assert letter["stage"] == "reserve"
    assert letter["original_id"] == garbage_id
    assert letter["order_id"] == "bogus"
    assert letter["deliveries"] == 1  # permanent: no retry
    assert letter["error"].startswith("undecodable entry"), letter
    assert letter["previous_state"] == ""
    assert dead_letters(env, "reserve") == [letter]
    assert dead_letters(env, "payment") == []
    # Acked together with the move; no order record was made up for it.
    group = r.xinfo_groups(KEYS.stream("reserve"))[0]
    assert (group["pending"], group["lag"]) == (0, 0)
    assert not r.exists(KEYS.order("bogus"))
    status = status_json(env)
    assert status["dead_letters"] == 1
    assert status["orders"]["dead_lettered"] == 0
    assert consumers.procs[0].poll() is None, "the consumer died on a bad entry"

    unknown = run_dlq(env, "retry", "1-1")
    assert unknown.returncode == 1
    assert "not found: 1-1" in unknown.stderr
    malformed = run_dlq(env, "retry", "nope")  # a typo, not an unreachable server (exit 3)
    assert (malformed.returncode, malformed.stderr.splitlines()[-1]) == (
        1,
        "streamproc: not found: nope",
    )
    assert run_dlq(env, "purge", "1-1").returncode == 1
    assert r.xlen(KEYS.dead_letters) == 1  # a failed purge of another id deleted nothing
    bogus_stage = run_dlq(env, "list", "--stage", "bogus")
    assert bogus_stage.returncode == 2
    assert "unknown stage 'bogus'" in bogus_stage.stderr
    assert run_dlq(env, "retry").returncode == 2  # neither ids nor --all

    purged = run_dlq(env, "purge", "--all")
    assert purged.returncode == 0, purged.stderr
    assert purged.stdout.strip() == "purged 1"
    assert dead_letters(env) == []
    assert r.xlen(KEYS.dead_letters) == 0


def run_dlq(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return cli(["dlq", *args], env, check=False)


def history_ms(order: dict[str, Any], state: str) -> float:
    """When the order entered `state` (the last time), as epoch seconds."""
    for step in reversed(order["history"].split(";")):
        name, _, stamp = step.partition("@")
        if name == state:
            return datetime.fromisoformat(stamp).timestamp()
    raise AssertionError(f"{order['order_id']} never was {state}: {order['history']}")


def test_a_batch_slower_than_the_claim_time_keeps_its_entries(
    consumers: Fleet, tmp_path: Path
) -> None:
    """Payment batches take five claim times (a slow gateway), and one delivery is all an entry
    may use: a live consumer keeps refreshing its entries' idle time, so no reclaimer takes them
    (which would count a second delivery and dead-letter orders that are being paid)."""
    ids = [f"S-{n:03d}" for n in range(30)]
    env = consumers.env = dict(
        consumers.env,
        STREAMPROC_PAYMENT_SUCCESS_RATE="1.0",
        STREAMPROC_PAYMENT_LATENCY_MS=str(5 * CLAIM_IDLE_MS),
        STREAMPROC_MAX_DELIVERIES="1",
    )
    cli(["stock", "set", "SKU-S", "1000"], env)
    orders_csv = write_orders(
        tmp_path / "slow.csv", [one_line(order_id, "SKU-S", 1) for order_id in ids]
    )
    cli(["ingest", str(orders_csv)], env)
    consumers.spawn("all", "slow-a")
    consumers.spawn("all", "slow-b")
    consumers.drain(60)

    orders = export(env)
    assert sorted(orders) == ids
    for order_id, order in orders.items():
        assert state_path(order) == ["pending", "reserved", "completed"], order_id
        assert order["charges"] == 1, order_id
    assert dead_letters(env) == []


def test_poison_order_is_dead_lettered_after_max_deliveries_and_retried(
    consumers: Fleet, r: redis.Redis, tmp_path: Path
) -> None:
    poison, total = "P-017", 40
    env = consumers.env = dict(
        consumers.env,
        STREAMPROC_PAYMENT_SUCCESS_RATE="1.0",
        STREAMPROC_MAX_DELIVERIES="3",
        STREAMPROC_BATCH_SIZE="200",  # the whole file in one batch: poison and good together
    )
    ids = [f"P-{n:03d}" for n in range(total)]
    cli(["stock", "set", "SKU-P", "1000"], env)
    orders_csv = write_orders(
        tmp_path / "poison.csv", [one_line(order_id, "SKU-P", 2) for order_id in ids]
    )
    cli(["ingest", str(orders_csv)], env)
    consumers.spawn("all", "poisoned", STREAMPROC_FAULT_POISON=poison)
    consumers.drain(30)

    orders = export(env)
    bad = orders[poison]
    assert bad["state"] == "dead_lettered"
    assert state_path(bad) == ["pending", "dead_lettered"]
    assert bad["charges"] == 0
    good = {order_id: order for order_id, order in orders.items() if order_id != poison}
    assert len(good) == total - 1
    for order_id, order in good.items():
        assert state_path(order) == ["pending", "reserved", "completed"], order_id
        assert order["charges"] == 1, order_id
    # Not held up by their batch-mate: all done before its budget was even spent.
    assert max(history_ms(o, "completed") for o in good.values()) < history_ms(bad, "dead_lettered")

    letters = dead_letters(env)
    assert [(d["stage"], d["order_id"]) for d in letters] == [
        ("reserve", poison),
        ("notify", poison),  # its dead_lettered notification hit the poison too
    ], letters
    reserve_letter, notify_letter = letters
    assert reserve_letter["deliveries"] == 3
    assert notify_letter["deliveries"] == 3
    assert "injected poison" in reserve_letter["error"]
    assert reserve_letter["previous_state"] == "pending"
    assert reserve_letter["original_id"]
    assert status_json(env)["orders"]["dead_lettered"] == 1
    assert {line["order_reference"] for line in notification_lines(env)} == set(good)

    # Fixed: restart without the poison and re-drive the order, then its notification.
    consumers.spawn("all", "healed")
    retried = run_dlq(env, "retry", reserve_letter["id"])
    assert (retried.returncode, retried.stdout.strip()) == (0, "retried 1"), retried.stderr
    rest = run_dlq(env, "retry", "--all")
    assert (rest.returncode, rest.stdout.strip()) == (0, "retried 1"), rest.stderr
    consumers.drain(30)

    orders = export(env)
    revived = orders[poison]
    assert revived["state"] == "completed", revived
    assert revived["history"].count("completed@") == 1
    assert state_path(revived)[-3:] == ["pending", "reserved", "completed"]
    assert revived["charges"] == 1
    assert all(order["state"] == "completed" for order in orders.values())
    assert dead_letters(env) == []
    status = status_json(env)
    assert (status["dead_letters"], status["orders"]["completed"]) == (0, total)
    assert status["orders"]["dead_lettered"] == 0
    stock = stock_show(env)["SKU-P"]
    assert (stock["available"], stock["reserved"], stock["committed"]) == (1000 - 2 * total, 0, 80)
    # INV-N: one notification per order, "success" for the revived one too; the retried
    # notification of its dead-lettered state is stale by then and is not sent.
    assert_one_notification_line_per_record(env, orders)


# --- the run loop's dead-letter decisions, in-process ----------------------------------------


class StubHandler:
    """A reserve handler whose answers are scripted per call; it records every delivery seen."""

    stage = "reserve"

    def __init__(self, answer: Callable[[Message, int], Decision]) -> None:
        self.answer = answer
        self.seen: list[tuple[str, int]] = []

    async def handle(self, batch: list[Message]) -> list[Decision]:
        decisions = []
        for message in batch:
            self.seen.append((message.order_id, message.deliveries))
            decisions.append(self.answer(message, len(self.seen)))
        return decisions


def run_stub_loop(
    url: str,
    handler: Handler | Callable[[StageContext], Handler],
    until: Callable[[redis.Redis], bool],
    *,
    max_deliveries: int,
    settle_s: float = 0.5,
    notifications_log: Path | None = None,
) -> RunLoop:
    """Run the RunLoop of the handler's stage until `until(client)`, then a little longer.

    `handler` is a handler, or a factory taking the stage context (for the real handlers).
    """
    settings = Settings(
        redis_url=url, claim_idle_ms=CLAIM_IDLE_STUB_MS, notifications_log=notifications_log
    )

    async def main() -> RunLoop:
        client = async_client(url)
        ctx = StageContext.build(settings, client)
        chosen = handler if isinstance(handler, StubHandler) else handler(ctx)
        stream = StageStream(client, ctx.scripts, KEYS, chosen.stage, "stub-consumer")
        loop = RunLoop(
            stream,
            chosen,
            concurrency=4,
            batch_size=10,
            block_ms=50,
            claim_idle_ms=CLAIM_IDLE_STUB_MS,
            max_deliveries=max_deliveries,
            trim=False,
        )
        stop = asyncio.Event()
        task = asyncio.create_task(loop.run(stop))
        try:
            with redis.Redis.from_url(url, decode_responses=True) as sync:
                async with asyncio.timeout(15):
                    while not await asyncio.to_thread(until, sync):
                        assert not task.done(), "the run loop ended by itself"
                        await asyncio.sleep(0.02)
                await asyncio.sleep(settle_s)  # nothing more may happen to it
        finally:
            stop.set()
            await task
            await client.aclose()
        assert loop.fatal is None, loop.fatal
        return loop

    return asyncio.run(main())


def dead_lettered(r: redis.Redis) -> bool:
    return r.xlen(KEYS.dead_letters) > 0


def only_letter(r: redis.Redis) -> dict[str, str]:
    ((_, fields),) = r.xrange(KEYS.dead_letters)
    return fields


def assert_order_dead_lettered(r: redis.Redis, order_id: str, error: str) -> None:
    order = r.hgetall(KEYS.order(order_id))
    assert (order["s"], order["k"], order["e"]) == ("dead_lettered", "", error)
    assert re.fullmatch(r"p0d[0-9]+", order["h"]), order  # pending since c, then dead_lettered
    assert r.hget(KEYS.state_counts, "dead_lettered") == "1"
    assert r.hget(KEYS.state_counts, "pending") == "0"
    # One entry, on the facts stream that notify and the snapshot stage both read.
    assert r.xlen(KEYS.stream("notify")) == 0
    (entry,) = r.xrange(KEYS.sources("notify")[0])
    assert (entry[1]["o"], entry[1]["s"], entry[1]["a"]) == (order_id, "dead_lettered", "1")
    group = r.xinfo_groups(KEYS.stream("reserve"))[0]
    assert (group["pending"], group["lag"]) == (0, 0)


def test_permanent_failure_is_dead_lettered_on_first_delivery(
    redis_url: str, r: redis.Redis, tmp_path: Path
) -> None:
    ingest_one(redis_url, tmp_path, "S-1")
    handler = StubHandler(lambda m, _n: Decision.failure(m, "boom", permanent=True))
    loop = run_stub_loop(redis_url, handler, dead_lettered, max_deliveries=5)

    assert handler.seen == [("S-1", 1)]
    letter = only_letter(r)
    assert (letter["stage"], letter["o"], letter["deliveries"], letter["error"]) == (
        "reserve",
        "S-1",
        "1",
        "boom",
    )
    assert letter["prev"] == "pending"
    assert_order_dead_lettered(r, "S-1", "boom")
    assert loop.outcomes["dead_lettered"] == 1


def test_transient_failure_is_retried_then_dead_lettered_when_budget_is_spent(
    redis_url: str, r: redis.Redis, tmp_path: Path
) -> None:
    ingest_one(redis_url, tmp_path, "S-2")
    handler = StubHandler(lambda m, _n: Decision.failure(m, "boom", permanent=False))
    loop = run_stub_loop(redis_url, handler, dead_lettered, max_deliveries=2)

    # Delivered, left pending, reclaimed after claim_idle_ms, failed again: then given up.
    assert handler.seen == [("S-2", 1), ("S-2", 2)]
    letter = only_letter(r)
    assert (letter["stage"], letter["deliveries"]) == ("reserve", "2")
    assert letter["error"] == "gave up after 2 deliveries: boom"
    assert_order_dead_lettered(r, "S-2", letter["error"])
    assert (loop.outcomes["retry"], loop.outcomes["dead_lettered"]) == (1, 1)


def test_transient_failure_then_success_commits_once(
    redis_url: str, r: redis.Redis, tmp_path: Path
) -> None:
    ingest_one(redis_url, tmp_path, "S-3")

    def answer(message: Message, call: int) -> Decision:
        if call == 1:
            return Decision.failure(message, "blip", permanent=False)
        return Decision(message, "reserved")

    handler = StubHandler(answer)
    run_stub_loop(
        redis_url,
        handler,
        lambda c: c.hget(KEYS.order("S-3"), "s") == "reserved",
        max_deliveries=2,
    )
    assert handler.seen == [("S-3", 1), ("S-3", 2)]
    assert r.xlen(KEYS.dead_letters) == 0
    assert r.xlen(KEYS.stream("payment")) == 1
    assert r.xinfo_groups(KEYS.stream("reserve"))[0]["pending"] == 0


def test_commit_of_a_vanished_order_is_dead_lettered(
    redis_url: str, r: redis.Redis, tmp_path: Path
) -> None:
    ingest_one(redis_url, tmp_path, "S-4")

    def answer(message: Message, _call: int) -> Decision:
        r.delete(KEYS.order(message.order_id))  # gone between the effect and the commit
        return Decision(message, "reserved")

    handler = StubHandler(answer)
    run_stub_loop(redis_url, handler, dead_lettered, max_deliveries=5)
    assert handler.seen == [("S-4", 1)]
    letter = only_letter(r)
    assert (letter["o"], letter["error"], letter["prev"]) == ("S-4", "order record is missing", "")
    assert r.xlen(KEYS.stream("payment")) == 0
    assert r.xlen(KEYS.stream("notify")) == r.xlen(KEYS.stream("snapshot")) == 0
    assert r.xinfo_groups(KEYS.stream("reserve"))[0]["pending"] == 0


def ingest_one(url: str, tmp_path: Path, order_id: str) -> None:
    """Ingest one order: pending, waiting for reserve, one entry on the reserve stream."""
    path = write_orders(tmp_path / f"{order_id}.csv", [one_line(order_id, "SKU-S", 1)])
    with redis.Redis.from_url(url) as client:
        ensure_groups_sync(client, KEYS)
        result = ingest_file(client, KEYS, str(path), "USD")
    assert result.imported == 1


def test_notification_leased_by_a_crashed_consumer_waits_without_spending_its_budget(
    redis_url: str, r: redis.Redis, tmp_path: Path
) -> None:
    # A notify consumer died between leasing a record and writing it: the lease outlives several
    # reclaims. Waiting for it must not count as failed deliveries (max 2 here), or the order is
    # dead-lettered and never notified.
    log_path = tmp_path / "notifications.log"
    ensure_groups_sync(r, KEYS)
    order = Order(
        "S-5", 7, "Lease Holder", "USD", "2025-11-10T00:00:00Z", [Line("SKU-S", "", 1, 100)]
    )
    r.hset(KEYS.order("S-5"), mapping={"s": "completed", "k": "", "a": "1"})
    notify_reads = KEYS.sources("notify")[0]
    r.xadd(notify_reads, {"o": "S-5", "a": "1", "s": "completed", "d": encode_order(order)})
    record_id = new_id("S-5", "completed", "log")
    expires_at = time.time() + 1.2  # a dozen claim-idle periods
    r.hset(KEYS.notification_leases, record_id, f"crashed-consumer|{int(expires_at * 1000)}")

    def notified_or_given_up(client: redis.Redis) -> bool:
        return log_path.exists() or client.xlen(KEYS.dead_letters) > 0

    run_stub_loop(
        redis_url,
        NotifyHandler,
        notified_or_given_up,
        max_deliveries=2,
        notifications_log=log_path,
    )
    assert r.xlen(KEYS.dead_letters) == 0, r.xrange(KEYS.dead_letters)
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [line["id"] for line in lines] == [record_id]
    # Written once the lease had expired (the log's stamps have whole seconds).
    assert datetime.fromisoformat(lines[0]["ts"]).timestamp() >= int(expires_at)
    assert not r.hexists(KEYS.notification_leases, record_id)
    (group,) = (g for g in r.xinfo_groups(notify_reads) if g["name"] == KEYS.group("notify"))
    assert (group["pending"], group["lag"]) == (0, 0)
