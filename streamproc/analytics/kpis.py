"""KPIs by order day and currency, computed with DuckDB over the snapshot store, cached in Redis.

Only `completed` orders count towards revenue, orders, customers and items; `failed_count` counts
orders whose latest outcome is failed, rolled_back or dead_lettered (an order re-submitted or
retried has several facts; see query_range). A cached answer is keyed by
the manifest version it was computed from, and a new snapshot deletes the cache.
"""

from __future__ import annotations

import asyncio
from datetime import date, timedelta
from pathlib import Path

import msgspec
import redis.asyncio as aredis

from streamproc.analytics.store import Duck, Snapshot, load_manifest, source_sql
from streamproc.keys import Keys

CACHE_TTL_S = 3600


class DayKpis(msgspec.Struct):
    """One order day's figures (money in cents)."""

    date: str
    total_revenue_cents: int = 0
    order_count: int = 0
    average_order_value_cents: int = 0
    unique_customers: int = 0
    items_sold: int = 0
    failed_count: int = 0


class RangeKpis(msgspec.Struct):
    """Totals over [start_date, end_date] (both included) and every day of it, in order."""

    currency: str
    start_date: str
    end_date: str
    total_revenue_cents: int
    order_count: int
    average_order_value_cents: int
    unique_customers: int
    items_sold: int
    failed_count: int
    days: list[DayKpis]
    snapshot_version: int
    cached: bool = False


# Each query reads only the columns it names from the listed files.
PER_DAY_SQL = """
SELECT day, sum(total_cents), count(*), count(DISTINCT customer_id), sum(items) FROM {src}
WHERE state = 'completed' AND currency = ? AND day BETWEEN ?::DATE AND ?::DATE GROUP BY day
"""
CUSTOMERS_SQL = """
SELECT count(DISTINCT customer_id) FROM {src}
WHERE state = 'completed' AND currency = ? AND day BETWEEN ?::DATE AND ?::DATE
"""
# failed_count: orders whose latest fact is a failure. Every fact flagged `prior` supersedes
# exactly one earlier fact of its order (same day and currency), and that one is a failure
# (completed is final), so the count is failures minus prior facts: one scan, no join.
FAILED_SQL = """
SELECT day, count(*) FILTER (WHERE state <> 'completed') - count(*) FILTER (WHERE prior) FROM {src}
WHERE currency = ? AND day BETWEEN ?::DATE AND ?::DATE GROUP BY day
"""

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(RangeKpis)


def average_cents(total_cents: int, count: int) -> int:
    """total / count rounded half up to a cent (0 when there is nothing to average)."""
    return (2 * total_cents + count) // (2 * count) if count else 0


def query_range(
    snapshot: Snapshot, root_paths: list[str], currency: str, start: str, end: str
) -> RangeKpis:
    """Run the KPI queries over the given store files (blocking; call in a thread)."""
    per_day: dict[str, DayKpis] = {}
    unique = 0
    if root_paths:
        cur = Duck.cursor()
        src = source_sql(root_paths)  # the file list is ours, quoted there
        params = [currency, start, end]
        for day, revenue, orders, customers, items in cur.execute(
            PER_DAY_SQL.format(src=src), params
        ).fetchall():
            per_day[str(day)] = DayKpis(
                str(day),
                int(revenue),
                int(orders),
                average_cents(int(revenue), int(orders)),
                int(customers),
                int(items),
            )
        row = cur.execute(CUSTOMERS_SQL.format(src=src), params).fetchone()
        unique = int(row[0]) if row else 0
        for day, failed in cur.execute(FAILED_SQL.format(src=src), params).fetchall():
            if failed:
                per_day.setdefault(str(day), DayKpis(str(day))).failed_count = int(failed)
    days = [per_day.get(d, DayKpis(d)) for d in day_range(start, end)]
    revenue = sum(d.total_revenue_cents for d in days)
    orders = sum(d.order_count for d in days)
    return RangeKpis(
        currency=currency,
        start_date=start,
        end_date=end,
        total_revenue_cents=revenue,
        order_count=orders,
        average_order_value_cents=average_cents(revenue, orders),
        unique_customers=unique,
        items_sold=sum(d.items_sold for d in days),
        failed_count=sum(d.failed_count for d in days),
        days=days,
        snapshot_version=snapshot.version,
    )


def day_range(start: str, end: str) -> list[str]:
    """Every day from start to end, both included (YYYY-MM-DD)."""
    first, last = date.fromisoformat(start), date.fromisoformat(end)
    return [str(first + timedelta(days=i)) for i in range((last - first).days + 1)]


async def range_kpis(
    client: aredis.Redis, keys: Keys, store_root: Path, currency: str, start: str, end: str
) -> RangeKpis:
    """KPIs over [start, end] from the current snapshot: cached, or computed and cached."""
    snapshot = await load_manifest(client, keys)
    field = f"{snapshot.version}|range|{currency}|{start}|{end}"
    hit = await client.hget(keys.kpi_cache, field)
    if hit is not None:
        cached = _decoder.decode(hit)
        cached.cached = True
        return cached
    paths = snapshot.paths(store_root, start, end)
    result = await asyncio.to_thread(query_range, snapshot, paths, currency, start, end)
    async with client.pipeline(transaction=False) as pipe:
        pipe.hset(keys.kpi_cache, field, _encoder.encode(result))
        pipe.expire(keys.kpi_cache, CACHE_TTL_S)
        await pipe.execute()
    return result
