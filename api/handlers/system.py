"""`GET /api/health` and `GET /api/stats`."""

from __future__ import annotations

import asyncio
import time
from typing import Literal

import msgspec
import redis.exceptions
from starlette.responses import Response

from api.endpoints import Call
from api.responses import failure, money, success
from api.types import Currency
from streamproc.clock import now_ms, utc_day
from streamproc.monitor import StreamState, load_streams
from streamproc.stats import load_stats
from streamproc.workflow import DRAIN_ONLY

# A consumer blocked in XREADGROUP touches the server every BLOCK interval; silent this long: gone.
LIVE_CONSUMER_IDLE_MS = 30_000
CheckStatus = Literal["ok", "warn", "fail"]


class Check(msgspec.Struct):
    """One part of the health report."""

    status: CheckStatus
    detail: str


class StageHealth(msgspec.Struct):
    """One stage's group as health sees it."""

    stage: str
    status: CheckStatus
    group_exists: bool
    live_consumers: int
    lag: int
    pending: int
    oldest_pending_ms: int


class Health(msgspec.Struct):
    """The health report; status is fail exactly when the answer is 503."""

    status: Literal["ok", "degraded", "fail"]
    checks: dict[str, Check]
    stages: list[StageHealth]
    redis_latency_ms: float | None


def _stage_health(stage: StreamState) -> StageHealth:
    live = sum(1 for c in stage.consumers if c.idle_ms < LIVE_CONSUMER_IDLE_MS)
    waiting = stage.lag + stage.pending
    status: CheckStatus = "ok"
    if not stage.group_exists or (waiting and not live):
        status = "fail" if waiting or not stage.group_exists else "warn"
    elif not live and stage.stage not in DRAIN_ONLY:
        # finalize and rollback only drain what earlier versions left: with nothing waiting,
        # running no consumer for them is fine (README, "Where it departs from the spec").
        status = "warn"
    return StageHealth(
        stage.stage,
        status,
        stage.group_exists,
        live,
        stage.lag,
        stage.pending,
        stage.oldest_pending_ms,
    )


def _report(stages: list[StreamState], latency_ms: float) -> Health:
    rows = [_stage_health(s) for s in stages]
    missing = [r.stage for r in rows if not r.group_exists]
    stalled = [r.stage for r in rows if r.group_exists and r.status == "fail"]
    idle = [r.stage for r in rows if r.status == "warn"]
    checks = {
        "redis": Check("ok", "reachable"),
        "consumer_groups": Check("fail", f"missing for: {', '.join(missing)}; start consumers")
        if missing
        else Check("ok", "every stage has its group"),
        "lag": Check("fail", f"work waiting with no live consumer: {', '.join(stalled)}")
        if stalled
        else Check(
            "warn" if idle else "ok",
            f"no live consumer: {', '.join(idle)}" if idle else "every stage is being consumed",
        ),
    }
    statuses = {c.status for c in checks.values()}
    overall: Literal["ok", "degraded", "fail"] = (
        "fail" if "fail" in statuses else "degraded" if "warn" in statuses else "ok"
    )
    return Health(overall, checks, rows, round(latency_ms, 3))


def _down(detail: str) -> Health:
    return Health(
        "fail",
        {
            "redis": Check("fail", detail),
            "consumer_groups": Check("fail", "unknown while Redis is unreachable"),
            "lag": Check("fail", "unknown while Redis is unreachable"),
        },
        [],
        None,
    )


async def health(call: Call[None, None, None]) -> Response:
    """Redis, every stage's consumer group and lag: 200 when usable, 503 naming what failed."""
    services = call.services
    started = time.perf_counter()
    try:
        async with asyncio.timeout(services.settings.api_redis_deadline_ms / 1000):
            await services.redis.ping()
            latency_ms = (time.perf_counter() - started) * 1000
            report = _report((await load_streams(services.redis, services.keys)).stages, latency_ms)
    except TimeoutError:
        report = _down("no answer within the deadline")
    except redis.exceptions.RedisError:
        report = _down("unreachable")
    if report.status != "fail":
        return success(report)
    failing = {
        name: [check.detail] for name, check in report.checks.items() if check.status == "fail"
    }
    return failure(503, f"Unhealthy: {', '.join(failing)}.", failing, data=report)


class StatsQuery(msgspec.Struct):
    """Query of /api/stats."""

    currency: Currency | None = None


class OrderCounts(msgspec.Struct):
    """Orders by the original's buckets (processing = reserved or paid)."""

    total: int
    pending: int
    processing: int
    completed: int
    failed: int


class TodayStats(msgspec.Struct):
    """Today (UTC): orders received, reaching completed, failing; revenue of completed ones."""

    date: str
    orders: int
    completed: int
    failed: int
    revenue: float
    currency: str
    revenue_by_currency: dict[str, float]


class Stats(msgspec.Struct):
    """The original's dashboard numbers, from O(1) counters."""

    orders: OrderCounts
    today: TodayStats
    by_state: dict[str, int]


async def stats(call: Call[None, StatsQuery, None]) -> Stats:
    """Orders now by state, and today's orders, completions, failures and revenue."""
    services = call.services
    currency = (call.query.currency or services.settings.default_currency).upper()
    loaded = await load_stats(services.redis, services.keys, utc_day(now_ms()))
    s, day = loaded.by_state, loaded.day
    counts = OrderCounts(
        total=sum(s.values()),
        pending=s["pending"],
        processing=s["reserved"] + s["paid"],
        completed=s["completed"],
        failed=s["failed"] + s["rolled_back"] + s["dead_lettered"],
    )
    failed_today = sum(day.terminal.get(k, 0) for k in ("failed", "rolled_back", "dead_lettered"))
    today = TodayStats(
        date=day.day,
        orders=day.orders,
        completed=day.terminal.get("completed", 0),
        failed=failed_today,
        revenue=money(day.revenue_cents.get(currency, 0)),
        currency=currency,
        revenue_by_currency={k: money(v) for k, v in sorted(day.revenue_cents.items())},
    )
    return Stats(counts, today, s)
