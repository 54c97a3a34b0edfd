"""Order counts by state and today's counters, from the hashes the scripts keep (O(1))."""

from __future__ import annotations

import msgspec
import redis.asyncio

from streamproc.keys import Keys
from streamproc.models import STATES
from streamproc.rawpipe import pairs, pipelined
from streamproc.replies import text

REVENUE_PREFIX = "revenue:"


class DayCounters(msgspec.Struct):
    """One UTC day: orders ingested, orders reaching each terminal state, revenue per currency."""

    day: str
    orders: int
    terminal: dict[str, int]
    revenue_cents: dict[str, int]


class OrderStats(msgspec.Struct):
    """Orders per state now, and the counters of one day."""

    by_state: dict[str, int]
    day: DayCounters


def parse_day(day: str, raw: dict[bytes, bytes]) -> DayCounters:
    """A day-counters hash as read from Redis."""
    values = {text(k): int(v) for k, v in raw.items()}
    revenue = {
        k[len(REVENUE_PREFIX) :]: v for k, v in values.items() if k.startswith(REVENUE_PREFIX)
    }
    terminal = {k: v for k, v in values.items() if k in STATES}
    return DayCounters(day, values.get("orders", 0), terminal, revenue)


async def load_stats(client: redis.asyncio.Redis, keys: Keys, day: str) -> OrderStats:
    """State counts and the counters of `day` (YYYY-MM-DD, UTC), in one round trip."""
    counts_flat, day_flat = await pipelined(
        client, [("HGETALL", keys.state_counts), ("HGETALL", keys.day(day))]
    )
    counts, day_raw = pairs(counts_flat), pairs(day_flat)
    by_state = {state: 0 for state in STATES}
    for key, value in counts.items():
        name = text(key)
        if name in by_state:
            by_state[name] = int(value)
    return OrderStats(by_state, parse_day(day, day_raw))
