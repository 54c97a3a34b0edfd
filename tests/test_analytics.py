"""Analytics (SPEC §5) proven against the real server and real processes.

The expected figures are recomputed here from `orders export` alone (the orders' own records), and
compared with what the analytics report: the KPIs from the Parquet store (`kpis --json`), the live
leaderboards (Redis sorted sets and `leaderboard show --json`), every customer's standing, and the
store's rows read with DuckDB from the files the manifest lists. Faults: the snapshot stage is
SIGKILLed while writing and before registering, a rebuild runs while the boards are polled and
orders keep completing, and two snapshot writers race on the same entries. The boards are
written as the snapshot stage registers each file, so they always equal the registered store.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import subprocess
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any, TypeVar, cast

import duckdb
import msgspec
import pytest
import redis

from streamproc.analytics.facts import seq_of
from streamproc.analytics.kpis import RangeKpis, day_range, range_kpis
from streamproc.analytics.leaderboard import customer_standing, top_customers, top_products
from streamproc.analytics.snapshotter import SnapshotLoop
from streamproc.analytics.store import FactStore, FileInfo, load_manifest_sync, source_sql
from streamproc.connection import async_client
from streamproc.context import StageContext
from streamproc.gateway import simulated_outcome
from streamproc.keys import STAGES, Keys
from streamproc.lua import SyncScripts
from streamproc.models import Line, Order, encode_order
from streamproc.settings import Settings
from streamproc.transport import StageStream, ensure_groups
from tests.helpers import stop_procs
from tests.invariants import order_ids_in, split_orders_csv, write_products
from tests.support import TERMINAL, cli, export, raw_boards, status_json, write_orders
from tests.support import Fleet as SupportFleet

KEYS = Keys()
T = TypeVar("T")
FAILED_STATES = ("failed", "rolled_back", "dead_lettered")
PAYMENT_SEED = 11
SUCCESS_RATE = 0.8


def run_async(work: Callable[[Any], Coroutine[Any, Any, T]], url: str) -> T:
    """Run `work(client)` with an asyncio client (bytes replies) on the test server."""

    async def main() -> T:
        client = async_client(url)
        try:
            return await work(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


# --- the store, read as a reader would: only the files the manifest lists ---------------------


@dataclass(frozen=True)
class StoreRow:
    """The columns of one store row the tests check."""

    order_id: str
    attempt: int
    seq: int
    state: str
    prior: bool
    currency: str
    day: str
    total_cents: int
    items: int


def store_rows(url: str, root: Path) -> list[StoreRow]:
    """Every row of every file in the manifest; also checks each file holds what it claims."""
    with redis.Redis.from_url(url) as client:
        snapshot = load_manifest_sync(client, KEYS)
    paths = snapshot.paths(root)
    if not paths:
        return []
    with duckdb.connect() as con:
        for name, info in snapshot.files.items():
            (rows,) = con.execute(
                f"SELECT count(*) FROM {source_sql([str(root / name)])}"  # noqa: S608
            ).fetchone() or (0,)
            assert rows == info.rows, f"{name} holds {rows} rows, the manifest says {info.rows}"
        columns = "order_id, attempt, seq, state, prior, currency, day::VARCHAR, total_cents, items"
        found = con.execute(f"SELECT {columns} FROM {source_sql(paths)}").fetchall()  # noqa: S608
    return [StoreRow(*row) for row in found]


def assert_each_fact_once(rows: Sequence[StoreRow]) -> None:
    """No stream entry and no order attempt is in the store twice."""
    seqs = Counter((row.order_id, row.seq) for row in rows)
    attempts = Counter((row.order_id, row.attempt) for row in rows)
    twice = {key: n for key, n in seqs.items() if n > 1}
    assert not twice, f"facts stored more than once: {sorted(twice)[:10]}"
    twice = {key: n for key, n in attempts.items() if n > 1}
    assert not twice, f"order attempts stored more than once: {sorted(twice)[:10]}"


def assert_store_matches_orders(
    rows: Sequence[StoreRow], orders: dict[str, dict[str, Any]]
) -> None:
    """One row per terminal attempt of every order; the latest row carries the order's state."""
    assert_each_fact_once(rows)
    expected = {
        (order_id, attempt)
        for order_id, order in orders.items()
        for attempt in range(1, order["attempts"] + 1)
    }
    stored = {(row.order_id, row.attempt) for row in rows}
    assert stored == expected, (
        f"missing: {sorted(expected - stored)[:10]}, unexpected: {sorted(stored - expected)[:10]}"
    )
    latest: dict[str, StoreRow] = {}
    for row in sorted(rows, key=lambda row: row.seq):
        latest[row.order_id] = row
    for row in rows:
        order = orders[row.order_id]
        assert (row.currency, row.day, row.total_cents) == (
            order["currency"],
            order["order_date"][:10],
            order["total_cents"],
        ), row
        assert row.items == sum(line["quantity"] for line in order["lines"]), row
        assert row.prior == (row.attempt > 1), row
        assert row.state in TERMINAL, row
    for order_id, row in latest.items():
        assert (row.state, row.attempt) == (orders[order_id]["state"], orders[order_id]["attempts"])


# --- the expected figures, recomputed from the export -----------------------------------------


def completed(orders: dict[str, dict[str, Any]], currency: str) -> list[dict[str, Any]]:
    """The completed orders of one currency."""
    return [o for o in orders.values() if o["state"] == "completed" and o["currency"] == currency]


def half_up(total: int, count: int) -> int:
    """total / count in whole cents, rounded half up (an independent computation)."""
    if not count:
        return 0
    return int((Decimal(total) / Decimal(count)).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def expected_kpis(
    orders: dict[str, dict[str, Any]], currency: str, start: str, end: str
) -> dict[str, Any]:
    """What `kpis --json` must print for [start, end] in `currency`."""
    per_day: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"revenue": 0, "orders": 0, "customers": set(), "items": 0, "failed": 0}
    )
    for order in orders.values():
        day = order["order_date"][:10]
        if order["currency"] != currency or not start <= day <= end:
            continue
        figures = per_day[day]
        if order["state"] == "completed":
            figures["revenue"] += order["total_cents"]
            figures["orders"] += 1
            figures["customers"].add(order["customer_id"])
            figures["items"] += sum(line["quantity"] for line in order["lines"])
        elif order["state"] in FAILED_STATES:
            figures["failed"] += 1
    days = []
    for day in day_range(start, end):
        f = per_day[day]
        days.append(
            {
                "date": day,
                "total_revenue_cents": f["revenue"],
                "order_count": f["orders"],
                "average_order_value_cents": half_up(f["revenue"], f["orders"]),
                "unique_customers": len(f["customers"]),
                "items_sold": f["items"],
                "failed_count": f["failed"],
            }
        )
    revenue = sum(d["total_revenue_cents"] for d in days)
    count = sum(d["order_count"] for d in days)
    return {
        "currency": currency,
        "start_date": start,
        "end_date": end,
        "total_revenue_cents": revenue,
        "order_count": count,
        "average_order_value_cents": half_up(revenue, count),
        "unique_customers": len(
            set().union(*(per_day[d]["customers"] for d in day_range(start, end)))
        ),
        "items_sold": sum(d["items_sold"] for d in days),
        "failed_count": sum(d["failed_count"] for d in days),
        "days": days,
    }


def kpis_json(env: dict[str, str], currency: str, start: str, end: str) -> dict[str, Any]:
    """`kpis --json` over [start, end] (`--date` when they are one day), without the fields
    that describe the cache."""
    days = ["--date", start] if start == end else ["--start", start, "--end", end]
    got = json_of(cli(["kpis", *days, "--currency", currency, "--json"], env).stdout)
    got.pop("snapshot_version")
    got.pop("cached")
    return got


@dataclass
class CustomerSum:
    """A customer's completed orders in one currency, from the export."""

    spent: int = 0
    orders: int = 0
    first: str = ""
    latest: tuple[str, str] = ("", "")
    name: str = ""


@dataclass
class ProductSum:
    """A SKU's completed lines in one currency, from the export."""

    units: int = 0
    revenue: int = 0
    orders: set[str] = field(default_factory=set)
    latest: tuple[str, str] = ("", "")
    name: str = ""


def expected_customers(orders: dict[str, dict[str, Any]], currency: str) -> dict[int, CustomerSum]:
    """Every customer with a completed order in `currency`."""
    out: dict[int, CustomerSum] = defaultdict(CustomerSum)
    for order in completed(orders, currency):
        c = out[order["customer_id"]]
        c.spent += order["total_cents"]
        c.orders += 1
        c.first = min(c.first or order["order_date"], order["order_date"])
        key = (order["order_date"], order["order_id"])
        if key > c.latest:
            c.latest, c.name = key, order["customer_name"]
    return dict(out)


def expected_products(orders: dict[str, dict[str, Any]], currency: str) -> dict[str, ProductSum]:
    """Every SKU sold in `currency` (the name: the latest order's non-empty one)."""
    out: dict[str, ProductSum] = defaultdict(ProductSum)
    for order in completed(orders, currency):
        key = (order["order_date"], order["order_id"])
        for line in order["lines"]:
            p = out[line["sku"]]
            p.units += line["quantity"]
            p.revenue += line["quantity"] * line["unit_price_cents"]
            p.orders.add(order["order_id"])
            if line["name"] and key > p.latest:
                p.latest, p.name = key, line["name"]
    return dict(out)


def board_order(scores: dict[str, int]) -> list[str]:
    """Members by score, highest first; equal scores by member descending as text (ZREVRANGE)."""
    return sorted(sorted(scores, reverse=True), key=lambda member: -scores[member])


def expected_customer_board(
    orders: dict[str, dict[str, Any]], currency: str
) -> list[tuple[int, int, str, int, int]]:
    """(rank, customer id, name, orders, spent) for every customer, in board order."""
    sums = expected_customers(orders, currency)
    order = board_order({str(cid): c.spent for cid, c in sums.items()})
    return [
        (rank, int(m), sums[int(m)].name, sums[int(m)].orders, sums[int(m)].spent)
        for rank, m in enumerate(order, start=1)
    ]


def expected_product_board(
    orders: dict[str, dict[str, Any]], currency: str
) -> list[tuple[int, str, str, int, int, int]]:
    """(rank, sku, name, units, revenue, orders) for every SKU, in board order."""
    sums = expected_products(orders, currency)
    order = board_order({sku: p.units for sku, p in sums.items()})
    return [
        (rank, s, sums[s].name, sums[s].units, sums[s].revenue, len(sums[s].orders))
        for rank, s in enumerate(order, start=1)
    ]


def live_boards(url: str, currency: str) -> tuple[list[Any], list[Any]]:
    """Both boards of a currency in full, through the library's readers."""

    async def work(client: Any) -> tuple[list[Any], list[Any]]:
        customers = await top_customers(client, KEYS, currency, 1_000_000)
        products = await top_products(client, KEYS, currency, 1_000_000)
        return (
            [(c.rank, c.customer_id, c.customer_name, c.order_count, c.total_spent_cents)
             for c in customers],
            [(p.rank, p.product_sku, p.product_name, p.total_quantity, p.total_revenue_cents,
              p.order_count) for p in products],
        )  # fmt: skip

    return run_async(work, url)


def assert_boards(url: str, orders: dict[str, dict[str, Any]], currency: str) -> None:
    """The live customer and product boards of `currency` equal the recomputation."""
    customers, products = live_boards(url, currency)
    want_customers = expected_customer_board(orders, currency)
    assert len(customers) == len(want_customers), currency
    for got, want in zip(customers, want_customers, strict=True):
        assert got == want, (currency, got, want)
    assert products == expected_product_board(orders, currency), currency


# --- two snapshot writers racing on the same entries ------------------------------------------


class GatedStore(FactStore):
    """A FactStore whose first write waits for a go before it starts: a writer paused mid-flush."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.entered = threading.Event()
        self.go = threading.Event()

    def write_rows(
        self, rows: Sequence[bytes], last_id: str, on_half: Callable[[], None] | None = None
    ) -> tuple[str, FileInfo]:
        """Stop until `go`, once; then write as usual."""
        if not self.entered.is_set():
            self.entered.set()
            assert self.go.wait(20), "the test never let the paused writer go on"
        return super().write_rows(rows, last_id, on_half)


def race_order(n: int) -> Order:
    """A small completed order for the racing writers."""
    return Order(
        f"R-{n:03d}",
        100 + n % 3,
        f"Racer {n}",
        "USD",
        f"2025-11-1{n % 3}T10:00:00Z",
        [Line("SKU-R", "Racing thing", 1 + n % 2, 1250)],
    )


@pytest.mark.parametrize("taken", ["all", "newest_only"])
def test_racing_snapshot_writers_register_each_fact_once(
    redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, taken: str
) -> None:
    # Writer A reads ten entries and stalls while writing them. B takes them over (as its reclaim
    # would once they look idle): all of them, or only the six newest when A touched the oldest
    # four since (A reclaimed them from a third consumer). B writes and registers first; then A
    # finishes its file and tries to register it. A must be refused (conflict), drop its file and
    # rewrite only what is still its own; the store must hold each fact once.
    root = tmp_path / "store"
    stream, group = KEYS.stream("snapshot"), KEYS.group("snapshot")
    settings = Settings(
        redis_url=redis_url, claim_idle_ms=600_000, analytics_dir=root, snapshot_interval_ms=10
    )
    caplog.set_level(logging.WARNING, logger="streamproc.snapshot")

    async def work(client: Any) -> tuple[SnapshotLoop, SnapshotLoop, list[bytes], list[bytes]]:
        ctx = StageContext.build(settings, client)
        await ensure_groups(client, KEYS)
        ids = [
            await client.xadd(
                stream, {"o": o.order_id, "a": "1", "s": "completed", "d": encode_order(o)}
            )
            for o in map(race_order, range(10))
        ]
        gated = GatedStore(root)
        writer_a = SnapshotLoop(
            ctx, StageStream(client, ctx.scripts, KEYS, "snapshot", "snap-a"), gated, one_shot=True
        )
        task_a = asyncio.create_task(writer_a.run(asyncio.Event()))
        assert await asyncio.to_thread(gated.entered.wait, 10), "writer A never started writing"
        owned = await client.xpending_range(stream, group, "-", "+", 100, consumername="snap-a")
        assert len(owned) == 10, owned
        taken_ids = ids if taken == "all" else ids[4:]
        claimed = await client.xclaim(stream, group, "snap-b", 0, taken_ids, justid=True)
        assert claimed == taken_ids
        writer_b = SnapshotLoop(
            ctx,
            StageStream(client, ctx.scripts, KEYS, "snapshot", "snap-b"),
            FactStore(root),
            one_shot=True,
        )
        await writer_b.run(asyncio.Event())
        gated.go.set()
        await asyncio.wait_for(task_a, 20)
        return writer_a, writer_b, ids, taken_ids

    writer_a, writer_b, ids, taken_ids = run_async(work, redis_url)

    assert (writer_a.fatal, writer_b.fatal) == (None, None)
    assert writer_b.outcomes["facts"] == len(taken_ids)
    rows = store_rows(redis_url, root)
    assert_each_fact_once(rows)
    assert sorted(row.seq for row in rows) == sorted(seq_of(i) for i in ids)
    # A's registration was refused; it then wrote only the entries B never took.
    assert any("were taken over" in rec.getMessage() for rec in caplog.records), caplog.text
    assert writer_a.outcomes["facts"] == 10 - len(taken_ids), writer_a.outcomes
    with redis.Redis.from_url(redis_url) as client:
        manifest = load_manifest_sync(client, KEYS)
        (group_info,) = (g for g in client.xinfo_groups(stream) if g["name"].decode() == group)
        assert (group_info["pending"], group_info["lag"]) == (0, 0)
    # The refused file is gone from disk; what is left is exactly what the manifest lists.
    on_disk = {p.name for p in root.iterdir() if p.is_file()}
    assert on_disk == set(manifest.files), (on_disk, manifest.files)
    assert manifest.version == (1 if taken == "all" else 2)

    # The fence itself, once more by hand: registering a new file of already-registered entries
    # is refused and changes nothing.
    async def again(client: Any) -> Any:
        ctx = StageContext.build(settings, client)
        return await ctx.scripts.run(
            "snapshot_register",
            [stream, KEYS.snapshot_files, KEYS.snapshot_version, KEYS.kpi_cache,
             KEYS.leaderboard_rebuild, KEYS.leaderboard_pending],
            [group, "snap-c", "facts-extra.parquet", b"{}", "", *ids[:2]],
        )  # fmt: skip

    status, _ = run_async(again, redis_url)
    assert status == b"conflict"
    with redis.Redis.from_url(redis_url) as client:
        assert load_manifest_sync(client, KEYS) == manifest


# --- a large run with re-submissions, as real processes ---------------------------------------


class Fleet(SupportFleet):
    """The shared Fleet, plus stopping one consumer on its own."""

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGTERM one consumer; it must exit 0."""
        assert stop_procs([proc]) == [0], self.logs()
        self.procs.remove(proc)

    def wait_idle(self, timeout_s: float) -> None:
        """`streamproc wait` (every stage drained, snapshot too); the consumers keep running."""
        done = cli(
            ["wait", "--timeout", str(timeout_s)], self.env, check=False, timeout=timeout_s + 30
        )
        if done.returncode != 0:
            status = cli(["status"], self.env, check=False).stdout
            pytest.fail(f"not drained: {done.stderr}\n{status}\n{self.logs()}")


@pytest.fixture
def fleet(sp_env: dict[str, str], tmp_path: Path) -> Iterator[Fleet]:
    env = dict(
        sp_env,
        STREAMPROC_LOG_LEVEL="WARNING",
        STREAMPROC_PAYMENT_SUCCESS_RATE=str(SUCCESS_RATE),
        STREAMPROC_PAYMENT_SEED=str(PAYMENT_SEED),
        STREAMPROC_BLOCK_MS="100",  # a SIGTERMed consumer notices the stop this fast
    )
    running = Fleet(env, tmp_path)
    try:
        yield running
    finally:
        stop_procs(running.procs)


def store_root(env: dict[str, str]) -> Path:
    """The snapshot store's directory the processes of `env` use."""
    return Settings.from_env(env).analytics_path


def paying_ids(prefix: str, count: int) -> list[str]:
    """Order ids whose first payment the seeded gateway approves."""
    found: list[str] = []
    n = 0
    while len(found) < count:
        order_id = f"{prefix}{n}"
        if simulated_outcome(PAYMENT_SEED, f"pay:{order_id}", SUCCESS_RATE):
            found.append(order_id)
        n += 1
    return found


POISON = "X-POISON"
# Customers outside the generated range, each with one identical paid EUR order: a tie on the
# board, ranked by member descending as text ("999" > "9007199254740991" > "1000").
TIED_CUSTOMERS = (1000, 999, 2**53 - 1)


def analytics_orders(path: Path, count: int, seed: int) -> tuple[Path, dict[str, int]]:
    """A seeded CSV of `count` orders in three currencies, and its SKU catalogue.

    Three SKUs have little stock (failed orders); names change between a customer's orders and
    between a product's lines (the board shows the latest); some dates carry a UTC offset that
    moves them to another day, and date-only ones share midnight (ties broken by order id).
    """
    rng = random.Random(seed)
    catalogue = {f"SKU-A{i:02d}": (40 if i < 3 else 1_000_000) for i in range(12)}
    skus = list(catalogue)
    rows: list[list[object]] = []
    for n in range(count):
        customer = rng.randint(1, 700)
        currency = rng.choice(("USD", "USD", "USD", "EUR", "EUR", "GBP"))
        name = f"Customer {customer}{rng.choice(('', '', ' Jr', ' (moved)'))}"
        day, kind = rng.randint(1, 28), rng.random()
        if kind < 0.1:
            offset = rng.choice(("+05:30", "-07:00"))
            order_date = (
                f"2025-11-{day:02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00{offset}"
            )
        elif kind < 0.15:
            order_date = f"2025-11-{day:02d}"
        else:
            order_date = f"2025-11-{day:02d} {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00"
        for sku in rng.sample(skus, rng.choice((1, 1, 1, 2, 3))):
            product = rng.choice((f"Item {sku}", f"Item {sku} (2025)", ""))
            price = f"{rng.randint(0, 99_999) / 100:.2f}"
            rows.append(
                [f"A{n:05d}", customer, name, sku, product, rng.randint(1, 4), price, currency,
                 order_date]
            )  # fmt: skip
    for order_id, customer in zip(paying_ids("TIE-", 3), TIED_CUSTOMERS, strict=True):
        rows.append(
            [order_id, customer, f"Tied {customer}", "SKU-A05", "Tie", 1, "55.55", "EUR",
             "2025-11-15 12:00:00"]
        )  # fmt: skip
    rows.append([POISON, 5, "Customer 5", "SKU-A06", "Poison", 1, "1.00", "USD", "2025-11-02"])
    write_orders(path, rows)
    return path, catalogue


def day_shift(day: str, days: int) -> str:
    """A YYYY-MM-DD day moved by `days`."""
    return str(date.fromisoformat(day) + timedelta(days=days))


def assert_kpis_every_currency(env: dict[str, str], orders: dict[str, dict[str, Any]]) -> None:
    """Range and per-day KPIs of every currency, to the cent (a zero day on either side)."""
    days = sorted({o["order_date"][:10] for o in orders.values()})
    start, end = day_shift(days[0], -1), day_shift(days[-1], 1)
    for currency in sorted({o["currency"] for o in orders.values()}):
        got = kpis_json(env, currency, start, end)
        want = expected_kpis(orders, currency, start, end)
        for got_day, want_day in zip(got["days"], want["days"], strict=True):
            assert got_day == want_day, (currency, got_day, want_day)
        assert got == want, currency
    # One day on its own (`--date`, the API's ?date=): the same figures as that day of the range.
    busiest = Counter(o["order_date"][:10] for o in orders.values()).most_common(1)[0][0]
    assert kpis_json(env, "USD", busiest, busiest) == expected_kpis(orders, "USD", busiest, busiest)


def assert_standings(url: str, orders: dict[str, dict[str, Any]], currency: str) -> None:
    """Every customer's standing in `currency`, and None for one who never bought in it."""
    sums = expected_customers(orders, currency)
    board = expected_customer_board(orders, currency)
    rank = {customer: r for r, customer, *_ in board}
    stranger = max(o["customer_id"] for o in orders.values()) + 1

    async def work(client: Any) -> list[Any]:
        return [await customer_standing(client, KEYS, currency, cid) for cid in [*sums, stranger]]

    *standings, none = run_async(work, url)
    assert none is None
    for customer, standing in zip(sums, standings, strict=True):
        s = sums[customer]
        assert standing is not None, customer
        got = (
            standing.customer_name,
            standing.order_count,
            standing.total_spent_cents,
            standing.average_order_value_cents,
            standing.first_order,
            standing.last_order,
            standing.rank,
            standing.customers_ranked,
        )
        want = (
            s.name, s.orders, s.spent, half_up(s.spent, s.orders), s.first, s.latest[0],
            rank[customer], len(board),
        )  # fmt: skip
        assert got == want, (currency, customer)


def assert_cli_board(env: dict[str, str], orders: dict[str, dict[str, Any]], currency: str) -> None:
    """`leaderboard show --limit 500 --json`: the first 500 rows of the recomputed boards."""
    shown = json.loads(
        cli(["leaderboard", "show", "--limit", "500", "--currency", currency, "--json"], env).stdout
    )
    customers = [
        (c["rank"], c["customer_id"], c["customer_name"], c["order_count"], c["total_spent_cents"])
        for c in shown["customers"]
    ]
    assert customers == expected_customer_board(orders, currency)[:500]
    products = [
        (p["rank"], p["product_sku"], p["product_name"], p["total_quantity"],
         p["total_revenue_cents"], p["order_count"])
        for p in shown["products"]
    ]  # fmt: skip
    assert products == expected_product_board(orders, currency)[:500]


def test_kpis_and_boards_equal_the_recomputation_after_a_large_run_with_resubmissions(
    fleet: Fleet, r: redis.Redis, tmp_path: Path
) -> None:
    total = 20_000
    env = fleet.env = dict(fleet.env, STREAMPROC_MAX_DELIVERIES="2", STREAMPROC_FAULT_POISON=POISON)
    orders_csv, catalogue = analytics_orders(tmp_path / "orders.csv", total, seed=505)
    cli(["stock", "load", str(write_products(tmp_path / "products.csv", catalogue))], env)
    fleet.start("all", 2)
    fleet.wait_registered("snapshot", 2)
    imported = json_of(cli(["ingest", str(orders_csv), "--json"], env).stdout)
    assert (imported["imported"], imported["rejected"]) == (total + 4, 0)
    fleet.wait_idle(90)
    first = export(env)
    states = Counter(o["state"] for o in first.values())
    assert min(states[s] for s in TERMINAL) > 0, states
    assert first[POISON]["state"] == "dead_lettered"

    # Re-submission: the low SKUs get more stock, so some failed orders complete on attempt 2,
    # and some rolled back ones are paid this time; the others end failed again.
    for sku in list(catalogue)[:3]:
        cli(["stock", "set", sku, "150"], env)
    again = json_of(cli(["ingest", str(orders_csv), "--force", "--json"], env).stdout)
    unfinished = sum(n for s, n in states.items() if s != "completed")
    assert again["resubmitted"] == unfinished, again
    fleet.wait_idle(90)
    fleet.wait_drained(30)

    orders = export(env)
    retried = [o for o in orders.values() if o["attempts"] == 2]
    assert len(retried) == unfinished
    again_states = Counter(o["state"] for o in retried)
    assert again_states["completed"] > 0 and again_states["failed"] > 0, again_states
    assert orders[POISON]["state"] == "dead_lettered"
    snapshot_stage = status_json(env)["stages"]["snapshot"]
    assert (snapshot_stage["pending"], snapshot_stage["lag"]) == (0, 0), snapshot_stage

    # The store: one row per terminal attempt, exactly once, as the manifest lists it.
    root = store_root(env)
    rows = store_rows(env["STREAMPROC_REDIS_URL"], root)
    assert len(rows) == len(orders) + len(retried)
    assert_store_matches_orders(rows, orders)

    url = env["STREAMPROC_REDIS_URL"]
    assert_kpis_every_currency(env, orders)
    for currency in ("USD", "EUR", "GBP"):
        assert_boards(url, orders, currency)
        assert_standings(url, orders, currency)
    assert_cli_board(env, orders, "USD")
    assert_cli_board(env, orders, "EUR")
    tied = [row for row in expected_customer_board(orders, "EUR") if row[1] in TIED_CUSTOMERS]
    assert [row[1] for row in tied] == [999, 2**53 - 1, 1000], tied
    assert len({row[0] for row in tied}) == 3 and tied[2][0] - tied[0][0] == 2, tied

    # A rebuild from the store gives the very same boards, key for key.
    before = raw_boards(r)
    report = json_of(cli(["leaderboard", "rebuild", "--json"], env).stdout)
    assert report["currencies"] == ["EUR", "GBP", "USD"]
    assert report["unsnapshotted_orders"] == 0
    assert raw_boards(r) == before
    assert not r.exists(KEYS.leaderboard_rebuild)
    assert not r.keys(KEYS.leaderboard_prefix(staging=True) + "*")


def json_of(text: str) -> dict[str, Any]:
    """One JSON object printed by the CLI."""
    value = json.loads(text)
    assert isinstance(value, dict), text
    return value


# --- the snapshot stage SIGKILLed mid-write and before registering ----------------------------


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `predicate` until true; fail after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def all_terminal(env: dict[str, str], total: int) -> bool:
    """Every one of `total` orders has reached a terminal state (by the state counters)."""
    counts = status_json(env)["orders"]
    return bool(sum(counts[state] for state in TERMINAL) == total)


def current_kpis(url: str, root: Path, currency: str, start: str, end: str) -> RangeKpis:
    """range_kpis, the function the API's KPI endpoints answer with."""

    async def work(client: Any) -> RangeKpis:
        return await range_kpis(client, KEYS, root, currency, start, end)

    return run_async(work, url)


def figures(kpis: RangeKpis) -> dict[str, Any]:
    """A RangeKpis as `kpis --json` prints it, without the fields that describe the cache."""
    out = msgspec.to_builtins(kpis)
    assert isinstance(out, dict)
    out.pop("snapshot_version")
    out.pop("cached")
    return out


@pytest.mark.parametrize("point", ["mid_write", "before_register"])
def test_snapshot_stage_killed_while_writing_is_replaced_without_loss_or_repeat(
    point: str, fleet: Fleet, tmp_path: Path
) -> None:
    env = fleet.env = dict(
        fleet.env,
        STREAMPROC_CLAIM_IDLE_MS="1000",
        STREAMPROC_SNAPSHOT_INTERVAL_MS="300",
        STREAMPROC_BATCH_SIZE="50",
    )
    url, root = env["STREAMPROC_REDIS_URL"], store_root(env)
    orders_csv, catalogue = analytics_orders(tmp_path / "orders.csv", 600, seed=77)
    first_part, second_part = split_orders_csv(orders_csv, 2)
    total = len(order_ids_in(orders_csv))
    cli(["stock", "load", str(write_products(tmp_path / "products.csv", catalogue))], env)
    for stage in STAGES:
        if stage != "snapshot":
            fleet.spawn(stage, f"{stage}-1")
    first_writer = fleet.spawn("snapshot", "snap-1")

    # A first snapshot, before the fault: what readers must keep seeing while the stage is down.
    cli(["ingest", str(first_part)], env)
    fleet.wait_idle(60)
    fleet.stop(first_writer)
    earlier = export(env)
    with redis.Redis.from_url(url) as client:
        manifest = load_manifest_sync(client, KEYS)
    assert manifest.rows == len(earlier) > 0
    start, end = "2025-10-31", "2025-11-29"
    shown = current_kpis(url, root, "USD", start, end)
    assert figures(shown) == expected_kpis(earlier, "USD", start, end)
    files_before = {p.name for p in root.iterdir() if p.is_file()}
    assert files_before == set(manifest.files)

    doomed = fleet.spawn("snapshot", "snap-doomed", STREAMPROC_FAULT=f"snapshot:{point}")
    cli(["ingest", str(second_part)], env)
    fleet.wait_killed(doomed)

    # Meanwhile: nothing of the dead writer is visible; readers answer from the first snapshot.
    with redis.Redis.from_url(url) as client:
        assert load_manifest_sync(client, KEYS) == manifest
        owned = client.xpending_range(
            KEYS.stream("snapshot"), KEYS.group("snapshot"), "-", "+", 10_000, "snap-doomed"
        )
    assert owned, "the writer died owning no entries"
    meanwhile = current_kpis(url, root, "USD", start, end)
    assert figures(meanwhile) == figures(shown)
    assert meanwhile.snapshot_version == shown.snapshot_version
    assert kpis_json(env, "USD", start, end) == figures(shown)
    orphans = {p.name for p in root.iterdir() if p.is_file()} - files_before
    temps = list((root / ".tmp").iterdir())
    if point == "mid_write":
        assert orphans == set(), orphans
        assert [p.suffix for p in temps] == [".ndjson"], temps  # the half-written data
    else:
        assert len(orphans) == 1, orphans  # in place, never registered
        assert temps == []
        (orphan,) = orphans
        with duckdb.connect() as con:
            in_orphan = {
                row[0]
                for row in con.execute(
                    f"SELECT order_id FROM {source_sql([str(root / orphan)])}"  # noqa: S608
                ).fetchall()
            }
        assert len(in_orphan) == len(owned)

    # The rest of the pipeline goes on; then a fresh writer reclaims the dead one's entries.
    wait_for(lambda: all_terminal(env, total), 60, "every order to end")
    fleet.spawn("snapshot", "snap-2")
    fleet.wait_idle(60)
    fleet.wait_drained(30)

    orders = export(env)
    assert len(orders) == total
    rows = store_rows(url, root)
    assert len(rows) == total
    assert_store_matches_orders(rows, orders)
    # The first read after the new snapshot landed is computed afresh, from every file.
    after = current_kpis(url, root, "USD", start, end)
    assert after.snapshot_version > shown.snapshot_version and not after.cached
    assert figures(after) == expected_kpis(orders, "USD", start, end)
    assert_kpis_every_currency(env, orders)
    with redis.Redis.from_url(url) as client:
        final = load_manifest_sync(client, KEYS)
    if point == "before_register":
        # Still on disk (housekeeping deletes it only once old), never listed, never counted:
        # its facts are in the store once, through the file the new writer registered.
        assert orphan in {p.name for p in root.iterdir()} and orphan not in final.files
        assert in_orphan <= {row.order_id for row in rows}


# --- rebuilds while the boards are read and orders complete -----------------------------------


class BoardPoller(threading.Thread):
    """Reads whole boards in a loop (one ZREVRANGE each) and records every regression it sees."""

    def __init__(self, url: str, boards: Sequence[str]) -> None:
        super().__init__(daemon=True)
        self.client = redis.Redis.from_url(url)
        self.boards = boards
        self.samples = 0
        self.problems: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        """Poll until halted."""
        last: dict[str, tuple[int, int]] = {}
        try:
            while not self.halt.is_set():
                for board in self.boards:
                    rows = cast(
                        list[tuple[bytes, float]],
                        self.client.zrevrange(board, 0, -1, withscores=True),
                    )
                    size, total = len(rows), int(sum(score for _, score in rows))
                    seen = last.get(board)
                    if seen is not None:
                        if size == 0:
                            self.problems.append(f"{board} went empty")
                        elif size < seen[0]:
                            self.problems.append(f"{board} shrank {seen[0]} -> {size}")
                        if total < seen[1]:
                            self.problems.append(f"{board} total fell {seen[1]} -> {total}")
                    if size:
                        last[board] = (size, max(total, seen[1] if seen else 0))
                self.samples += 1
        finally:
            self.client.close()


def test_rebuilds_while_orders_complete_never_show_a_partial_board(
    fleet: Fleet, tmp_path: Path
) -> None:
    env = fleet.env = dict(fleet.env, STREAMPROC_SNAPSHOT_INTERVAL_MS="700")
    url = env["STREAMPROC_REDIS_URL"]
    orders_csv, catalogue = analytics_orders(tmp_path / "orders.csv", 12_000, seed=99)
    parts = split_orders_csv(orders_csv, 8)
    cli(["stock", "load", str(write_products(tmp_path / "products.csv", catalogue))], env)
    fleet.start("all", 2)
    fleet.wait_registered("snapshot", 2)
    boards = [KEYS.leaderboard(c, b) for c in ("USD", "EUR") for b in ("customers", "products")]
    poller = BoardPoller(url, boards)
    failures: list[str] = []

    def feed() -> None:
        for part in parts:
            done = cli(["ingest", str(part)], env, check=False)
            if done.returncode != 0:
                failures.append(done.stderr)
            time.sleep(0.3)

    feeder = threading.Thread(target=feed, daemon=True)
    poller.start()
    feeder.start()
    reports: list[dict[str, Any]] = []
    try:
        while feeder.is_alive() or len(reports) < 3:
            reports.append(json_of(cli(["leaderboard", "rebuild", "--json"], env).stdout))
        feeder.join(timeout=60)
        fleet.wait_idle(60)
        reports.append(json_of(cli(["leaderboard", "rebuild", "--json"], env).stdout))
        time.sleep(0.2)  # a few more reads of the final board
    finally:
        poller.halt.set()
        poller.join(timeout=10)
    assert failures == []
    assert poller.samples > 100, poller.samples
    assert poller.problems == [], poller.problems[:10]
    # The rebuilds really ran mid-stream: they summed stores of different sizes. Every
    # completion was marked for the boards, so none was counted before it was registered.
    assert len(reports) >= 4
    assert any(rep["facts_files"] > 0 for rep in reports), reports
    assert len({rep["customers"] for rep in reports}) > 1, reports
    assert all(rep["unsnapshotted_orders"] == 0 for rep in reports), reports

    fleet.wait_drained(30)
    orders = export(env)
    assert len(orders) == len(order_ids_in(orders_csv))
    for currency in ("USD", "EUR", "GBP"):
        assert_boards(url, orders, currency)


# --- the registration fence on its own ----------------------------------------------------------


def _commandstat_calls(client: redis.Redis, command: str) -> int:
    """How many times the server ran `command` (0 before its first call)."""
    return int(client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


def test_register_fence_lists_pending_ids_and_claims_only_when_the_list_is_not_enough(
    r: redis.Redis,
) -> None:
    """Facts held by a writer register (and are acked) without one claim while every id shows
    in the pending list; ids out of order, a range too crowded with another writer's entries to
    list, and a conflict go to the claim, which decides as before: only a conflict refuses."""
    stream, group = KEYS.stream("snapshot"), KEYS.group("snapshot")
    scripts = SyncScripts.register(r)
    r.xgroup_create(stream, group, id="0", mkstream=True)
    with r.pipeline(transaction=False) as pipe:
        for i in range(9000):
            pipe.xadd(stream, {"o": f"F{i}"})
        pipe.execute()
    # a takes 10 entries in every 12, b the other 2: ranges of b's ids hold many of a's.
    taken: dict[str, list[str]] = {"a": [], "b": []}
    while True:
        reply = r.xreadgroup(group, "a", {stream: ">"}, count=10)
        if not reply:
            break
        taken["a"] += [entry_id for entry_id, _ in reply[0][1]]
        reply = r.xreadgroup(group, "b", {stream: ">"}, count=2)
        taken["b"] += [entry_id for entry_id, _ in reply[0][1]] if reply else []
    a_ids = taken["a"]
    assert (len(a_ids), len(taken["b"])) == (7500, 1500)

    def register(name: str, ids: list[str]) -> str:
        keys = [stream, KEYS.snapshot_files, KEYS.snapshot_version, KEYS.kpi_cache,
                KEYS.leaderboard_rebuild, KEYS.leaderboard_pending]  # fmt: skip
        args = [group, "a", name, b"{}", "", *ids]
        status, *_ = scripts.run("snapshot_register", keys, args)
        return cast(str, status)

    def pending_of(consumer: str) -> int:
        return sum(
            int(c["pending"]) for c in r.xinfo_consumers(stream, group) if c["name"] == consumer
        )

    claims = _commandstat_calls(r, "xclaim")
    assert register("listed.parquet", a_ids[:1000]) == "ok"
    assert _commandstat_calls(r, "xclaim") == claims  # listed: no claim
    assert pending_of("a") == len(a_ids) - 1000
    assert pending_of("b") == len(taken["b"])

    # Out of order: the list misses ids, the claim takes them all.
    assert register("unsorted.parquet", a_ids[1000:1100][::-1]) == "ok"
    assert _commandstat_calls(r, "xclaim") == claims + 1
    # Too crowded to list: 1,000 of b's ids, over a range where more than 4,000 are pending.
    b_spread = taken["b"][200:1200]
    assert register("crowded.parquet", b_spread) == "ok"
    assert _commandstat_calls(r, "xclaim") == claims + 2
    assert pending_of("b") == len(taken["b"]) - 1000

    # A conflict: one id acked already. Nothing of the file is registered or acked.
    before = pending_of("a")
    assert register("conflict.parquet", [a_ids[5], *a_ids[1100:1200]]) == "conflict"
    assert pending_of("a") == before
    assert set(r.hkeys(KEYS.snapshot_files)) == {
        "listed.parquet", "unsorted.parquet", "crowded.parquet"
    }  # fmt: skip
