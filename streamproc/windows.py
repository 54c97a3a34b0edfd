"""Per-stage rates and p95 over the last minute, shared through short-lived Redis windows.

Every consumer process adds what its metrics counted since its last flush (messages settled per
stage, batches per processing-time bucket) to the hash of the current 5-second window, every
~2 s, in one script call (window_add.lua). The API sums the windows of the last minute for
`GET /api/streams`: one read for every consumer, with no Prometheus needed. Windows expire after a
few minutes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Iterable

import msgspec
import redis.asyncio as aredis

from streamproc.keys import Keys
from streamproc.lua import AsyncScripts
from streamproc.metrics import ConsumerMetrics
from streamproc.replies import text
from streamproc.runloop import TRANSIENT, sleep_or_stop

log = logging.getLogger("streamproc.windows")

WINDOW_S = 5
SPAN_S = 60
FLUSH_INTERVAL_S = 2.0
WINDOW_TTL_S = 300
MESSAGES = "n"
BUCKET = "le:"


class StageRate(msgspec.Struct):
    """One stage over the last minute: messages settled per second, p95 batch time (None: no
    batch in that minute)."""

    processed_per_s: float
    p95_seconds: float | None


class WindowWriter:
    """Flushes one consumer process's counts into the current window."""

    def __init__(self, scripts: AsyncScripts, keys: Keys, metrics: ConsumerMetrics) -> None:
        self.scripts = scripts
        self.keys = keys
        self.metrics = metrics
        self._flushed: dict[str, float] = {}  # field → cumulative value at the last flush

    async def run(self, stop: asyncio.Event) -> None:
        """Flush every FLUSH_INTERVAL_S until `stop`, then once more."""
        while not stop.is_set():
            await sleep_or_stop(stop, FLUSH_INTERVAL_S)
            await self.flush_quietly()

    async def flush_quietly(self) -> None:
        """flush(); a failure only delays these figures to the next flush."""
        try:
            await self.flush()
        except TRANSIENT as exc:
            log.debug("window flush failed (%s); retried with the next", exc)

    async def flush(self, now_s: float | None = None) -> int:
        """Add the counts since the last flush to the current window; fields written (0 also
        when the pipeline's streams are gone)."""
        totals = self._totals()
        # Counters only grow, by whole messages and batches: the deltas are whole numbers.
        deltas = {f: round(v - self._flushed.get(f, 0.0)) for f, v in totals.items()}
        args: list[str | int] = [WINDOW_TTL_S]
        for field, delta in deltas.items():
            if delta > 0:
                args += (field, delta)
        if len(args) == 1:
            return 0
        start = window_start(time.time() if now_s is None else now_s)
        keys = [self.keys.stage_window(start), self.keys.stream("reserve")]
        if not await self.scripts.run("window_add", keys, args):
            return 0
        self._flushed = totals
        return len(args) // 2

    def _totals(self) -> dict[str, float]:
        """Cumulative counts now: `<stage>:n` and `<stage>:le:<bound>` (batches at or under)."""
        totals: dict[str, float] = {}
        for family in self.metrics.messages.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    field = f"{sample.labels['stage']}:{MESSAGES}"
                    totals[field] = totals.get(field, 0.0) + sample.value
        for family in self.metrics.processing.collect():
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    totals[f"{sample.labels['stage']}:{BUCKET}{sample.labels['le']}"] = sample.value
        return totals


def window_start(now_s: float) -> int:
    """The epoch second the window holding `now_s` starts at."""
    return int(now_s // WINDOW_S) * WINDOW_S


async def stage_rates(
    client: aredis.Redis, keys: Keys, stages: Iterable[str], now_s: float | None = None
) -> dict[str, StageRate]:
    """Every stage's rate and p95 over the last minute (the current window included)."""
    now_s = time.time() if now_s is None else now_s
    current = window_start(now_s)
    first = current - SPAN_S
    pipe = client.pipeline(transaction=False)
    for start in range(first, current + 1, WINDOW_S):
        pipe.hgetall(keys.stage_window(start))
    merged: dict[str, int] = {}
    for window in await pipe.execute():
        for field, value in window.items():
            name = text(field)
            merged[name] = merged.get(name, 0) + int(value)
    span_s = max(now_s - first, 1.0)
    rates = {}
    for stage in stages:
        prefix = f"{stage}:{BUCKET}"
        buckets = [(float(f[len(prefix) :]), n) for f, n in merged.items() if f.startswith(prefix)]
        rates[stage] = StageRate(
            processed_per_s=round(merged.get(f"{stage}:{MESSAGES}", 0) / span_s, 3),
            p95_seconds=quantile(0.95, buckets),
        )
    return rates


def quantile(q: float, buckets: list[tuple[float, int]]) -> float | None:
    """The q-quantile of a histogram given as (upper bound, count at or under it) pairs, by
    linear interpolation inside its bucket (as PromQL's histogram_quantile); None when empty."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # beyond the last finite bound: the most that can be said
            if count == lower_count:
                return bound
            share = (rank - lower_count) / (count - lower_count)
            return round(lower_bound + (bound - lower_bound) * share, 6)
        lower_bound, lower_count = bound, count
    return lower_bound
