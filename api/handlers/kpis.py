"""`GET /api/kpis/daily`, `/api/kpis/range` (from the snapshot store) and `/api/kpis/realtime`.

Daily and range KPIs are DuckDB queries over the Parquet snapshot store, cached in Redis per
manifest version (streamproc.analytics.kpis), so they trail the pipeline by one snapshot interval.
Realtime figures come from the counters the stages keep, so they are live.
"""

from __future__ import annotations

from datetime import date

import msgspec

from api.endpoints import Call, Services
from api.responses import money
from api.types import Currency, Day
from streamproc.analytics.kpis import DayKpis, RangeKpis, range_kpis
from streamproc.analytics.realtime import load_realtime
from streamproc.clock import now_ms, utc_day
from streamproc.settings import Settings

# Three years (one of them a leap year): a dashboard's widest useful view, and a bound on the
# per-day list a single request can ask for.
MAX_RANGE_DAYS = 1096


def currency_of(given: str | None, settings: Settings) -> str:
    """The requested currency, upper-cased, or the configured default."""
    return (given or settings.default_currency).upper()


class DailyQuery(msgspec.Struct):
    """Query of /api/kpis/daily: the order day (default: today, UTC) and the currency."""

    date: Day | None = None
    currency: Currency | None = None


class RangeQuery(msgspec.Struct):
    """Query of /api/kpis/range: first and last order day (both included) and the currency."""

    start_date: Day
    end_date: Day
    currency: Currency | None = None

    def check(self) -> dict[str, list[str]]:
        """The range runs forwards and spans at most MAX_RANGE_DAYS days."""
        days = (self.end_date - self.start_date).days + 1
        if days < 1:
            return {"end_date": ["must be on or after start_date"]}
        if days > MAX_RANGE_DAYS:
            return {"end_date": [f"must be at most {MAX_RANGE_DAYS} days from start_date"]}
        return {}


class CurrencyQuery(msgspec.Struct):
    """A query with only the currency (default: STREAMPROC_DEFAULT_CURRENCY)."""

    currency: Currency | None = None


class DayFigures(msgspec.Struct):
    """One order day's completed orders (and failures) in the range's currency."""

    date: str
    total_revenue: float
    order_count: int
    average_order_value: float
    unique_customers: int
    items_sold: int
    failed_count: int


class DailyKpis(msgspec.Struct):
    """One order day's KPIs, from snapshot `snapshot_version` (cached: served from the cache)."""

    date: str
    currency: str
    total_revenue: float
    order_count: int
    average_order_value: float
    unique_customers: int
    items_sold: int
    failed_count: int
    snapshot_version: int
    cached: bool


class RangeKpisView(msgspec.Struct):
    """Totals over [start_date, end_date] and every day of it in order (days with no order: 0)."""

    start_date: str
    end_date: str
    currency: str
    total_revenue: float
    order_count: int
    average_order_value: float
    unique_customers: int
    items_sold: int
    failed_count: int
    days: list[DayFigures]
    snapshot_version: int
    cached: bool


class RealtimeKpis(msgspec.Struct):
    """Live figures: orders waiting now, and today's (UTC, by processing time) outcomes."""

    pending: int
    processing: int
    completed_today: int
    failed_today: int
    revenue_today: float
    orders_per_second: float
    currency: str
    date: str


def _day_figures(day: DayKpis) -> DayFigures:
    return DayFigures(
        date=day.date,
        total_revenue=money(day.total_revenue_cents),
        order_count=day.order_count,
        average_order_value=money(day.average_order_value_cents),
        unique_customers=day.unique_customers,
        items_sold=day.items_sold,
        failed_count=day.failed_count,
    )


async def _range(services: Services, currency: str, start: date, end: date) -> RangeKpis:
    return await range_kpis(
        services.redis,
        services.keys,
        services.settings.analytics_path,
        currency,
        start.isoformat(),
        end.isoformat(),
    )


async def daily_kpis(call: Call[None, DailyQuery, None]) -> DailyKpis:
    """Revenue, orders, average order value and customers of one order day."""
    q = call.query
    currency = currency_of(q.currency, call.services.settings)
    day = q.date or date.fromisoformat(utc_day(now_ms()))
    kpis = await _range(call.services, currency, day, day)
    return DailyKpis(
        date=day.isoformat(),
        currency=kpis.currency,
        total_revenue=money(kpis.total_revenue_cents),
        order_count=kpis.order_count,
        average_order_value=money(kpis.average_order_value_cents),
        unique_customers=kpis.unique_customers,
        items_sold=kpis.items_sold,
        failed_count=kpis.failed_count,
        snapshot_version=kpis.snapshot_version,
        cached=kpis.cached,
    )


async def kpi_range(call: Call[None, RangeQuery, None]) -> RangeKpisView:
    """KPIs over a range of order days (both ends included), with a per-day breakdown."""
    q = call.query
    currency = currency_of(q.currency, call.services.settings)
    kpis = await _range(call.services, currency, q.start_date, q.end_date)
    return RangeKpisView(
        start_date=kpis.start_date,
        end_date=kpis.end_date,
        currency=kpis.currency,
        total_revenue=money(kpis.total_revenue_cents),
        order_count=kpis.order_count,
        average_order_value=money(kpis.average_order_value_cents),
        unique_customers=kpis.unique_customers,
        items_sold=kpis.items_sold,
        failed_count=kpis.failed_count,
        days=[_day_figures(d) for d in kpis.days],
        snapshot_version=kpis.snapshot_version,
        cached=kpis.cached,
    )


async def realtime_kpis(call: Call[None, CurrencyQuery, None]) -> RealtimeKpis:
    """Pending and processing orders now; today's completions, failures, revenue and rate."""
    services = call.services
    currency = currency_of(call.query.currency, services.settings)
    live = await load_realtime(services.redis, services.keys, currency, now_ms())
    return RealtimeKpis(
        pending=live.pending,
        processing=live.processing,
        completed_today=live.completed_today,
        failed_today=live.failed_today,
        revenue_today=money(live.revenue_today_cents),
        orders_per_second=live.orders_per_second,
        currency=live.currency,
        date=live.day,
    )
