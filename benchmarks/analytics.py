"""Analytics benchmark: uncached KPI ranges, leaderboard rank lookups, snapshot stage throughput.

    python -m benchmarks.analytics [--orders 1000000] [--customers 1000000] [--facts 300000]
                                   [--repeat 20] [--lookups 5000] [--quick] [--output FILE]

Measures the three targets of issue 5, on a private server this script starts (see common.py):

1. KPIs: a store of ORDERS facts (a year of order days, about 90% completed and the rest rolled
   back or failed, 1-3 lines over 500 SKUs, 200k customers, 3% re-submissions flagged `prior`)
   is written straight to Parquet by DuckDB SQL with the store's exact schema, once as 1 file
   (what compaction makes: up to 1,000,000 facts) and once as 8 files (small files just before
   a compaction), and registered in the manifest. Timed after 2 warm-ups, REPEAT times each:
   `query_range` over the year, `range_kpis` with the KPI cache deleted before each call (the
   whole uncached path: manifest read, query, cache write), the cached path, and one day. The
   day's figures are checked against a plain recomputation from the Parquet rows. The files sit
   in the OS page cache ("uncached" means the KPI cache in Redis). Target: year < 100 ms (p90).
2. Leaderboard: CUSTOMERS customers loaded into the USD boards; `customer_standing` (one
   pipelined round trip) and a bare ZREVRANK on LOOKUPS random customers, and
   top_customers(10 / 100), each timed from the client. Target: rank lookup < 1 ms (p99).
3. Snapshot stage: FACTS terminal entries XADDed to the snapshot stream as commit.lua writes
   them (o, a, s, d, and r=1 on re-submissions), then one `streamproc snapshot` child; facts/s
   over the child's wall time (interpreter start-up included, and without it: minus the wall
   time of the same command on an empty stream), files written, peak RSS. The XADDs are not
   timed. Target: >= 50,000 facts/s (start-up included).

Results go to benchmarks/results/analytics.json (or --output); a summary with target met /
missed per figure is printed last.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import duckdb
import redis

from benchmarks.common import cli_env, machine, private_server, save
from benchmarks.generate import FIRST, LAST
from benchmarks.ingest import ChildRun
from streamproc.analytics.facts import COLUMNS, SEQ_BITS
from streamproc.analytics.kpis import DayKpis, average_cents, query_range, range_kpis
from streamproc.analytics.leaderboard import customer_standing, top_customers
from streamproc.analytics.store import (
    Duck,
    FileInfo,
    Snapshot,
    encode_info,
    file_name,
    load_manifest_sync,
    quote,
    source_sql,
)
from streamproc.connection import async_client
from streamproc.keys import Keys
from streamproc.models import Line, Order, encode_order
from streamproc.settings import Settings
from streamproc.transport import ensure_groups_sync

TARGET_RANGE_MS = 100.0
TARGET_RANK_MS = 1.0
TARGET_FACTS_PER_S = 50_000.0
YEAR_START, YEAR_END = "2025-01-01", "2025-12-31"
ONE_DAY = "2025-07-01"
CURRENCY = "USD"
SKUS = 500
STORE_CUSTOMERS = 200_000
RESUBMIT_PERCENT = 3
FILE_LAYOUTS = (1, 8)
WARMUPS = 2
# Stream ids of the generated facts: one per 2 ms from 2026-01-01 (re-submissions on odd ms).
T0_MS = 1_767_225_600_000
RESUBMIT_LAG = 1_000  # a re-submission lands this many orders after the original
QUICK = {"orders": 3_000, "customers": 2_000, "facts": 2_000, "repeat": 3, "lookups": 200}


def stats_ms(samples_s: list[float]) -> dict[str, float]:
    """p50 / p90 / p99 / max / mean of durations in seconds, as milliseconds."""
    ordered = sorted(s * 1000 for s in samples_s)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {
        "p50": at(0.5),
        "p90": at(0.9),
        "p99": at(0.99),
        "max": round(ordered[-1], 3),
        "mean": round(sum(ordered) / len(ordered), 3),
    }


# -- 1. the KPI store ---------------------------------------------------------------------------


def _words(words: list[str]) -> str:
    return "[" + ", ".join(f"'{w}'" for w in words) + "]"


def _facts_sql(facts: int, seed: int) -> str:
    """SQL creating temp table bench_facts: `facts` rows in the store's columns, plus `pos`."""
    resubmits = facts * RESUBMIT_PERCENT // 100
    orders = facts - resubmits
    casts = ", ".join(f"{name}::{kind} AS {name}" for name, kind in COLUMNS.items())
    # hash(i, seed, salt) is DuckDB's deterministic hash: the same seed gives the same store.
    return f"""
    CREATE OR REPLACE TEMP TABLE bench_orders AS
    WITH o AS (
        SELECT i,
            DATE '{YEAR_START}' + (hash(i, {seed}, 1) % 365)::INTEGER AS day,
            (hash(i, {seed}, 2) % 86400)::INTEGER AS second,
            1 + (hash(i, {seed}, 3) % {STORE_CUSTOMERS})::BIGINT AS customer_id,
            (hash(i, {seed}, 4) % 1000)::INTEGER AS roll,
            CASE WHEN hash(i, {seed}, 5) % 100 < 80 THEN 1
                 WHEN hash(i, {seed}, 5) % 100 < 95 THEN 2 ELSE 3 END AS line_count
        FROM range({orders}) t(i)
    ), picked AS (
        SELECT *, list_transform(range(line_count), lambda k: {{
            's': (hash(i, {seed}, 10 + k) % {SKUS})::BIGINT,
            'q': 1 + (hash(i, {seed}, 20 + k) % 3)::BIGINT}}) AS picks
        FROM o
    )
    SELECT i,
        {T0_MS} + 2 * i AS ms,
        'ORD-' || i AS order_id,
        1 AS attempt,
        CASE WHEN roll < 900 THEN 'completed' WHEN roll < 960 THEN 'rolled_back'
             ELSE 'failed' END AS state,
        false AS prior,
        customer_id,
        {_words(FIRST)}[customer_id % 10 + 1] || ' ' || {_words(LAST)}[(customer_id // 10) % 10 + 1]
            AS customer_name,
        '{CURRENCY}' AS currency,
        day,
        strftime(day + to_seconds(second), '%Y-%m-%dT%H:%M:%SZ') AS order_date,
        list_transform(picks, lambda p: {{
            'sku': 'SKU-' || lpad(p.s::VARCHAR, 5, '0'),
            'name': 'Product ' || p.s,
            'quantity': p.q,
            'amount_cents': p.q * (100 + (hash(p.s, {seed}, 99) % 49900)::BIGINT)}}) AS lines
    FROM picked;

    CREATE OR REPLACE TEMP TABLE bench_facts AS
    WITH f AS (
        SELECT ms, order_id, attempt, state, prior, customer_id, customer_name, currency, day,
            order_date, lines FROM bench_orders
        UNION ALL
        SELECT ms + {2 * RESUBMIT_LAG + 1}, order_id, 2,
            CASE WHEN hash(i, {seed}, 6) % 10 < 9 THEN 'completed' ELSE 'rolled_back' END,
            true, customer_id, customer_name, currency, day, order_date, lines
        -- Only a failed or rolled-back order is ever re-submitted (completed is final).
        FROM bench_orders WHERE state <> 'completed'
        QUALIFY row_number() OVER (ORDER BY i) <= {resubmits}
    )
    SELECT {casts}, row_number() OVER (ORDER BY seq) - 1 AS pos FROM (
        SELECT *, ms << {SEQ_BITS} AS seq, ms AS terminal_at_ms,
            list_sum(list_transform(lines, lambda x: x.amount_cents)) AS total_cents,
            list_sum(list_transform(lines, lambda x: x.quantity)) AS items
        FROM f);
    """  # noqa: S608


def write_store(root: Path, facts: int, files: int, seed: int = 7) -> dict[str, FileInfo]:
    """Write `facts` generated facts as `files` Parquet files under root (stream order, each
    sorted by day and customer as the snapshot stage writes them); returns name → FileInfo."""
    root.mkdir(parents=True, exist_ok=True)
    columns = ", ".join(COLUMNS)
    written: dict[str, FileInfo] = {}
    with duckdb.connect(":memory:") as con:
        con.execute(_facts_sql(facts, seed))
        per_file = -(-facts // files)
        for k in range(files):
            first, last = k * per_file, min(facts, (k + 1) * per_file) - 1
            if first > last:
                break
            row = con.execute(
                "SELECT count(*), min(day)::VARCHAR, max(day)::VARCHAR, max(terminal_at_ms) "
                "FROM bench_facts WHERE pos BETWEEN ? AND ?",
                [first, last],
            ).fetchone()
            assert row is not None
            rows, min_day, max_day, last_ms = row
            last_id = f"{last_ms}-0"
            name = file_name(last_id, merged=files == 1)
            con.execute(
                f"COPY (SELECT {columns} FROM bench_facts WHERE pos BETWEEN {first} AND {last} "  # noqa: S608
                f"ORDER BY day, customer_id) TO {quote(root / name)} "
                "(FORMAT parquet, COMPRESSION zstd)"
            )
            size = (root / name).stat().st_size
            written[name] = FileInfo(int(rows), str(min_day), str(max_day), last_id, size)
    return written


def register(client: redis.Redis, keys: Keys, files: dict[str, FileInfo]) -> None:
    """List the files in the manifest, as snapshot_register.lua would."""
    client.hset(keys.snapshot_files, mapping={n: encode_info(i) for n, i in files.items()})
    client.incr(keys.snapshot_version)


def recompute_day(paths: list[str], currency: str, day: str) -> DayKpis:
    """One day's KPIs from the plain rows, in Python (the check of what query_range answers)."""
    rows = (
        Duck.cursor()
        .execute(
            f"SELECT order_id, seq, state, currency, customer_id, total_cents, items "  # noqa: S608
            f"FROM {source_sql(paths)} WHERE day = ?::DATE",
            [day],
        )
        .fetchall()
    )
    done = [r for r in rows if r[2] == "completed" and r[3] == currency]
    latest: dict[str, tuple[int, str]] = {}
    for order_id, seq, state, cur, *_ in rows:
        if cur == currency and (order_id not in latest or seq > latest[order_id][0]):
            latest[order_id] = (seq, state)
    revenue = sum(r[5] for r in done)
    return DayKpis(
        date=day,
        total_revenue_cents=revenue,
        order_count=len(done),
        average_order_value_cents=average_cents(revenue, len(done)),
        unique_customers=len({r[4] for r in done}),
        items_sold=sum(r[6] for r in done),
        failed_count=sum(1 for _, state in latest.values() if state != "completed"),
    )


async def _timed(
    call: Callable[[], Awaitable[object]],
    repeat: int,
    before: Callable[[], Awaitable[object]] | None = None,
) -> dict[str, float]:
    """Warm up, then time `repeat` calls (`before` runs ahead of each, off the clock); the very
    first call is reported too."""
    samples: list[float] = []
    first = 0.0
    for n in range(WARMUPS + repeat):
        if before is not None:
            await before()
        started = time.perf_counter()
        await call()
        took = time.perf_counter() - started
        if n == 0:
            first = took
        if n >= WARMUPS:
            samples.append(took)
    return {**stats_ms(samples), "first_call": round(first * 1000, 3)}


async def measure_store(url: str, root: Path, keys: Keys, repeat: int) -> dict[str, Any]:
    """Time the KPI paths over one registered store."""
    client = async_client(url)
    sync = redis.Redis.from_url(url)
    try:
        snapshot: Snapshot = load_manifest_sync(sync, keys)
        year_paths = snapshot.paths(root, YEAR_START, YEAR_END)
        day_paths = snapshot.paths(root, ONE_DAY, ONE_DAY)

        async def year_query() -> object:
            return query_range(snapshot, year_paths, CURRENCY, YEAR_START, YEAR_END)

        async def day_query() -> object:
            return query_range(snapshot, day_paths, CURRENCY, ONE_DAY, ONE_DAY)

        def uncached(start: str, end: str) -> Callable[[], Awaitable[object]]:
            async def call() -> object:
                result = await range_kpis(client, keys, root, CURRENCY, start, end)
                assert not result.cached
                return result

            return call

        async def drop_cache() -> object:
            return await client.delete(keys.kpi_cache)

        async def cached_year() -> object:
            result = await range_kpis(client, keys, root, CURRENCY, YEAR_START, YEAR_END)
            assert result.cached
            return result

        figures: dict[str, Any] = {
            "files": len(snapshot.files),
            "rows": snapshot.rows,
            "bytes": sum(i.bytes for i in snapshot.files.values()),
            "year_query_range_ms": await _timed(year_query, repeat),
            "year_range_kpis_uncached_ms": await _timed(
                uncached(YEAR_START, YEAR_END), repeat, drop_cache
            ),
        }
        await range_kpis(client, keys, root, CURRENCY, YEAR_START, YEAR_END)
        figures["year_range_kpis_cached_ms"] = await _timed(cached_year, repeat)
        figures["day_query_range_ms"] = await _timed(day_query, repeat)
        figures["day_range_kpis_uncached_ms"] = await _timed(
            uncached(ONE_DAY, ONE_DAY), repeat, drop_cache
        )
        year = query_range(snapshot, year_paths, CURRENCY, YEAR_START, YEAR_END)
        figures["year"] = {
            "total_revenue_cents": year.total_revenue_cents,
            "order_count": year.order_count,
            "unique_customers": year.unique_customers,
            "items_sold": year.items_sold,
            "failed_count": year.failed_count,
        }
        [queried] = query_range(snapshot, day_paths, CURRENCY, ONE_DAY, ONE_DAY).days
        expected = recompute_day(year_paths, CURRENCY, ONE_DAY)
        figures["day_check"] = {
            "day": ONE_DAY,
            "queried": _day_dict(queried),
            "recomputed": _day_dict(expected),
            "matches": queried == expected,
        }
        return figures
    finally:
        await client.aclose()
        sync.close()


def _day_dict(day: DayKpis) -> dict[str, Any]:
    return {f: getattr(day, f) for f in day.__struct_fields__}


def bench_kpis(url: str, work: Path, orders: int, repeat: int, seed: int) -> dict[str, Any]:
    """Generate, register and time the store in each file layout."""
    stores: list[dict[str, Any]] = []
    sync = redis.Redis.from_url(url)
    for files in FILE_LAYOUTS:
        root, keys = work / f"store{files}", Keys(namespace=f"kpi{files}")
        started = time.perf_counter()
        written = write_store(root, orders, files, seed)
        generate_s = time.perf_counter() - started
        register(sync, keys, written)
        figures = asyncio.run(measure_store(url, root, keys, repeat))
        stores.append({"layout_files": files, "generate_seconds": round(generate_s, 2), **figures})
    sync.close()
    years = [s["year"] for s in stores]
    return {
        "facts": orders,
        "store_customers": STORE_CUSTOMERS,
        "skus": SKUS,
        "resubmit_percent": RESUBMIT_PERCENT,
        "repeat": repeat,
        "warmups": WARMUPS,
        "layouts_agree": all(y == years[0] for y in years),
        "stores": stores,
    }


# -- 2. leaderboard -----------------------------------------------------------------------------


def load_customers(client: redis.Redis, keys: Keys, customers: int, seed: int) -> None:
    """Fill the USD customer board and its info hash, as commit.lua leaves them."""
    rng = random.Random(seed)
    board = keys.leaderboard(CURRENCY, "customers")
    info = keys.leaderboard(CURRENCY, "customer_info")
    first_day = date.fromisoformat(YEAR_START)
    chunk = 20_000
    for start in range(1, customers + 1, chunk):
        scores: dict[str, int] = {}
        fields: dict[str, str | int] = {}
        for cid in range(start, min(customers, start + chunk - 1) + 1):
            orders = 1 + min(60, int(rng.expovariate(0.4)))
            first = first_day + timedelta(days=rng.randrange(365))
            last = min(date.fromisoformat(YEAR_END), first + timedelta(days=rng.randrange(200)))
            scores[str(cid)] = orders * rng.randint(300, 40_000)
            name = f"{FIRST[cid % 10]} {LAST[(cid // 10) % 10]}"
            # The card lib/leaderboard.lua keeps (analytics.leaderboard.read_card).
            fields[str(cid)] = f"{orders}|{first}T10:00:00Z|{last}T18:30:00Z|ORD-{cid}|{name}"
        pipe = client.pipeline(transaction=False)
        pipe.zadd(board, scores)
        pipe.hset(info, mapping=fields)
        pipe.execute()


async def _time_each(calls: list[Callable[[], Awaitable[object]]]) -> list[float]:
    samples: list[float] = []
    for call in calls:
        started = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - started)
    return samples


async def measure_board(url: str, keys: Keys, customers: int, lookups: int, seed: int) -> Any:
    """Time customer_standing, ZREVRANK and top_customers against the loaded board."""
    client = async_client(url)
    rng = random.Random(seed + 1)
    board = keys.leaderboard(CURRENCY, "customers")
    try:
        ids = [rng.randint(1, customers) for _ in range(lookups)]
        warm = ids[: max(1, lookups // 10)]

        def standing(cid: int) -> Callable[[], Awaitable[object]]:
            async def call() -> object:
                found = await customer_standing(client, keys, CURRENCY, cid)
                assert found is not None
                return found

            return call

        def rank(cid: int) -> Callable[[], Awaitable[object]]:
            return lambda: client.zrevrank(board, str(cid))

        def top(limit: int) -> Callable[[], Awaitable[object]]:
            return lambda: top_customers(client, keys, CURRENCY, limit)

        await _time_each([standing(c) for c in warm] + [rank(c) for c in warm])
        figures: dict[str, Any] = {
            "customer_standing_ms": stats_ms(await _time_each([standing(c) for c in ids])),
            "zrevrank_ms": stats_ms(await _time_each([rank(c) for c in ids])),
        }
        top_repeat = max(20, lookups // 25)
        for limit in (10, 100):
            samples = await _time_each([top(limit)] * top_repeat)
            figures[f"top_customers_{limit}_ms"] = stats_ms(samples)
        best = (await top_customers(client, keys, CURRENCY, 1))[0]
        leader = await customer_standing(client, keys, CURRENCY, best.customer_id)
        figures["check"] = {
            "leader_rank": leader.rank if leader else None,
            "customers_ranked": leader.customers_ranked if leader else None,
            "matches": leader is not None
            and leader.rank == 1
            and leader.customers_ranked == customers
            and leader.total_spent_cents == best.total_spent_cents,
        }
        return figures
    finally:
        await client.aclose()


def bench_leaderboard(url: str, customers: int, lookups: int, seed: int) -> dict[str, Any]:
    """Load the board, then time the reads."""
    keys = Keys(namespace="lb")
    client = redis.Redis.from_url(url)
    before = int(client.info("memory")["used_memory"])
    started = time.perf_counter()
    load_customers(client, keys, customers, seed)
    load_s = time.perf_counter() - started
    memory = int(client.info("memory")["used_memory"]) - before
    client.close()
    figures = asyncio.run(measure_board(url, keys, customers, lookups, seed))
    return {
        "customers": customers,
        "lookups": lookups,
        "load_seconds": round(load_s, 2),
        "redis_bytes_per_customer": round(memory / customers, 1),
        **figures,
    }


# -- 3. snapshot stage --------------------------------------------------------------------------


def add_entries(client: redis.Redis, keys: Keys, count: int, seed: int) -> dict[str, int]:
    """XADD `count` terminal entries to the snapshot stream as commit.lua does; returns states."""
    rng = random.Random(seed + 2)
    prices = [rng.randint(100, 50_000) for _ in range(SKUS)]
    stream = keys.stream("snapshot")
    recent: deque[tuple[str, bytes]] = deque(maxlen=1_000)
    states: dict[str, int] = {}
    pipe = client.pipeline(transaction=False)
    start = date.fromisoformat(YEAR_START)
    for n in range(count):
        if recent and rng.random() < RESUBMIT_PERCENT / 100:
            order_id, payload = recent[rng.randrange(len(recent))]
            state = "completed" if rng.random() < 0.9 else "rolled_back"
            fields = {"o": order_id, "a": "2", "s": state, "d": payload, "r": "1"}
        else:
            customer = rng.randint(1, STORE_CUSTOMERS)
            when = start + timedelta(days=rng.randrange(365))
            lines = []
            for _ in range(1 if rng.random() < 0.8 else rng.randint(2, 3)):
                sku = rng.randrange(SKUS)
                lines.append(
                    Line(f"SKU-{sku:05d}", f"Product {sku}", rng.randint(1, 3), prices[sku])
                )
            order = Order(
                f"ORD-{seed}-{n}",
                customer,
                f"{FIRST[customer % 10]} {LAST[(customer // 10) % 10]}",
                CURRENCY,
                f"{when}T{rng.randrange(24):02d}:{rng.randrange(60):02d}:00Z",
                lines,
            )
            roll = rng.random()
            state = "completed" if roll < 0.9 else "rolled_back" if roll < 0.96 else "failed"
            payload = encode_order(order)
            fields = {"o": order.order_id, "a": "1", "s": state, "d": payload}
            if n % 7 == 0:
                recent.append((order.order_id, payload))
        states[state] = states.get(state, 0) + 1
        pipe.xadd(stream, fields)
        if len(pipe) >= 2_000:
            pipe.execute()
    pipe.execute()
    return states


def run_sampled(argv: list[str], env: dict[str, str], out: Path, err: Path) -> ChildRun:
    """Run argv to completion: exit code, wall time, and its peak RSS sampled from
    /proc/<pid>/status (VmHWM, the high-water mark of its own memory since exec)."""
    peak_kib = 0
    with out.open("wb") as stdout, err.open("wb") as stderr:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdout=stdout, stderr=stderr)
        status = Path(f"/proc/{proc.pid}/status")
        while proc.poll() is None:
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak_kib = max(peak_kib, int(line.split()[1]))
            except (OSError, ValueError):
                pass  # exiting (or no /proc): the last sample stands
            time.sleep(0.01)
        wall = time.perf_counter() - started
    return ChildRun(proc.returncode, wall, peak_kib * 1024)


_SNAPSHOT_LINE = re.compile(r"snapshot: (\d+) facts written in (\d+) files")


def bench_snapshot(url: str, work: Path, facts: int, seed: int) -> dict[str, Any]:
    """Time one `streamproc snapshot` child over `facts` waiting entries."""
    keys = Keys()
    client = redis.Redis.from_url(url)
    ensure_groups_sync(client, keys)
    env = cli_env(url, work / "home")
    argv = [sys.executable, "-m", "streamproc", "snapshot"]
    # The same command on an empty stream: what start-up and shutdown cost on their own.
    idle = run_sampled(argv, env, work / "idle.out", work / "idle.err")
    states = add_entries(client, keys, facts, seed)
    child = run_sampled(argv, env, work / "snap.out", work / "snap.err")
    if child.returncode != 0 or idle.returncode != 0:
        err = (work / "snap.err").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"streamproc snapshot exited {child.returncode}: {err}")
    found = _SNAPSHOT_LINE.search((work / "snap.out").read_text())
    written, files = (int(found[1]), int(found[2])) if found else (0, 0)
    manifest = load_manifest_sync(client, keys)
    pending = int(client.xpending(keys.stream("snapshot"), keys.group("snapshot"))["pending"])
    client.close()
    settings = Settings.from_env(env)
    busy_s = max(1e-6, child.wall_seconds - idle.wall_seconds)
    return {
        "entries": facts,
        "entries_by_state": states,
        "snapshot_max_rows": settings.snapshot_max_rows,
        "snapshot_interval_ms": settings.snapshot_interval_ms,
        "wall_seconds": round(child.wall_seconds, 3),
        "idle_run_wall_seconds": round(idle.wall_seconds, 3),
        "facts_per_s": round(facts / child.wall_seconds, 1),
        "facts_per_s_without_startup": round(facts / busy_s, 1),
        "facts_written": written,
        "files_written": files,
        "manifest_rows": manifest.rows,
        "manifest_files": len(manifest.files),
        "pending_after": pending,
        "complete": written == manifest.rows == facts and pending == 0,
        "peak_rss_bytes": child.max_rss_bytes,  # VmHWM, sampled every 10 ms
        "idle_run_peak_rss_bytes": idle.max_rss_bytes,
        "peak_rss_mib": round(child.max_rss_bytes / 2**20, 1),
    }


# -- run and report -----------------------------------------------------------------------------


def verdicts(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each judged figure against its target."""
    out: list[dict[str, Any]] = []
    for store in result["kpis"]["stores"]:
        value = store["year_range_kpis_uncached_ms"]["p90"]
        out.append(
            {
                "figure": f"KPI year range, uncached, {store['files']} file(s), p90 ms",
                "value": value,
                "target": f"< {TARGET_RANGE_MS:g}",
                "met": value < TARGET_RANGE_MS,
            }
        )
    board = result["leaderboard"]
    for name in ("customer_standing_ms", "zrevrank_ms"):
        value = board[name]["p99"]
        out.append(
            {
                "figure": f"{name.removesuffix('_ms')} among {board['customers']:,}, p99 ms",
                "value": value,
                "target": f"< {TARGET_RANK_MS:g}",
                "met": value < TARGET_RANK_MS,
            }
        )
    snap = result["snapshot"]
    out.append(
        {
            "figure": f"snapshot stage facts/s ({snap['entries']:,} entries, start-up included)",
            "value": snap["facts_per_s"],
            "target": f">= {TARGET_FACTS_PER_S:,.0f}",
            "met": snap["facts_per_s"] >= TARGET_FACTS_PER_S,
        }
    )
    return out


def run(
    orders: int, customers: int, facts: int, repeat: int, lookups: int, seed: int = 7
) -> dict[str, Any]:
    """All three parts on one private server; the temporary store and home are deleted."""
    work = Path(tempfile.mkdtemp(prefix="sp-analytics-"))
    try:
        with private_server() as url:
            result: dict[str, Any] = {
                "benchmark": "analytics",
                "machine": {**machine(), "loadavg_at_start": list(os.getloadavg())},
                "config": {
                    "orders": orders,
                    "customers": customers,
                    "facts": facts,
                    "repeat": repeat,
                    "lookups": lookups,
                    "seed": seed,
                },
            }
            # The snapshot child first: a child's rusage peak RSS includes its parent's at the
            # fork (Linux folds the old memory's peak in at exec), so spawn it while ours is small.
            result["snapshot"] = bench_snapshot(url, work, facts, seed)
            result["leaderboard"] = bench_leaderboard(url, customers, lookups, seed)
            result["kpis"] = bench_kpis(url, work, orders, repeat, seed)
        result["verdicts"] = verdicts(result)
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


# The timed KPI reads of each store layout, as the result names them.
KPI_FIGURES = (
    "year_query_range_ms",
    "year_range_kpis_uncached_ms",
    "year_range_kpis_cached_ms",
    "day_query_range_ms",
    "day_range_kpis_uncached_ms",
)


def summary(result: dict[str, Any]) -> str:
    """A plain-text report: the main figures, then the targets."""
    lines = ["KPI store (ms: p50 / p90 / max)"]
    for s in result["kpis"]["stores"]:
        lines.append(f"  {s['rows']:,} facts in {s['files']} file(s), {s['bytes'] / 2**20:.1f} MiB")
        for name in KPI_FIGURES:
            f = s[name]
            lines.append(f"    {name:<30} {f['p50']:>8.2f} {f['p90']:>8.2f} {f['max']:>8.2f}")
        lines.append(f"    day check (query == recomputation): {s['day_check']['matches']}")
    b = result["leaderboard"]
    lines.append(f"Leaderboard, {b['customers']:,} customers (ms: p50 / p99 / max)")
    for name in (
        "customer_standing_ms",
        "zrevrank_ms",
        "top_customers_10_ms",
        "top_customers_100_ms",
    ):
        f = b[name]
        lines.append(f"    {name:<30} {f['p50']:>8.3f} {f['p99']:>8.3f} {f['max']:>8.3f}")
    n = result["snapshot"]
    lines.append(
        f"Snapshot: {n['entries']:,} entries in {n['wall_seconds']:.2f} s "
        f"({n['facts_per_s']:,.0f} facts/s; {n['facts_per_s_without_startup']:,.0f} without "
        f"start-up), {n['files_written']} files at max_rows {n['snapshot_max_rows']:,}, "
        f"peak RSS {n['peak_rss_mib']:.0f} MiB, complete: {n['complete']}"
    )
    lines.append("targets")
    for v in result["verdicts"]:
        mark = "met" if v["met"] else "MISSED"
        lines.append(f"  {mark:<7} {v['figure']}: {v['value']:,} (target {v['target']})")
    return "\n".join(lines)


def main() -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=1_000_000, help="facts in the KPI store")
    parser.add_argument("--customers", type=int, default=1_000_000, help="leaderboard size")
    parser.add_argument("--facts", type=int, default=300_000, help="entries to snapshot")
    parser.add_argument("--repeat", type=int, default=20, help="timed KPI calls per figure")
    parser.add_argument("--lookups", type=int, default=5_000, help="timed rank lookups")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help=f"tiny sizes: {QUICK}")
    parser.add_argument("--output", type=Path, help="JSON file instead of results/analytics.json")
    args = parser.parse_args()
    sizes = dict(QUICK) if args.quick else {k: getattr(args, k) for k in QUICK}
    result = run(seed=args.seed, **sizes)
    save("analytics", result, args.output)
    print()
    print(summary(result))
    checks = [s["day_check"]["matches"] for s in result["kpis"]["stores"]]
    checks += [result["kpis"]["layouts_agree"], result["leaderboard"]["check"]["matches"]]
    if not all(checks) or not result["snapshot"]["complete"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
