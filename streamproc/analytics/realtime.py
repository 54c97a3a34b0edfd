"""Realtime KPIs: from the counters the stages keep in the same step as each transition (O(1)).

"Today" is the current UTC day of processing (not of order_date), and the rate is orders reaching
a terminal state per second over the last complete minute.
"""

from __future__ import annotations

import msgspec
import redis.asyncio as aredis

from streamproc.clock import utc_day
from streamproc.keys import Keys
from streamproc.models import DEAD_LETTERED, FAILED, PAID, RESERVED, ROLLED_BACK
from streamproc.stats import load_stats

WINDOW_S = 60


class Realtime(msgspec.Struct):
    """Live figures of one currency's day (money in cents)."""

    currency: str
    day: str
    pending: int
    processing: int
    completed_today: int
    failed_today: int
    revenue_today_cents: int
    orders_per_second: float


async def load_realtime(client: aredis.Redis, keys: Keys, currency: str, now_ms: int) -> Realtime:
    """State counts, today's counters and the last minute's terminal orders per second."""
    day = utc_day(now_ms)
    stats = await load_stats(client, keys, day)
    second = now_ms // 1000
    # The current second is still filling: the window is the WINDOW_S seconds before it.
    counts = await client.mget([keys.throughput(second - i) for i in range(1, WINDOW_S + 1)])
    per_second = sum(int(c) for c in counts if c) / WINDOW_S
    terminal = stats.day.terminal
    return Realtime(
        currency=currency,
        day=day,
        pending=stats.by_state["pending"],
        processing=stats.by_state[RESERVED] + stats.by_state[PAID],
        completed_today=terminal.get("completed", 0),
        failed_today=sum(terminal.get(s, 0) for s in (FAILED, ROLLED_BACK, DEAD_LETTERED)),
        revenue_today_cents=stats.day.revenue_cents.get(currency, 0),
        orders_per_second=round(per_second, 2),
    )
