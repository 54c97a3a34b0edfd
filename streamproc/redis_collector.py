"""The metrics that describe Redis rather than a process, computed once per scrape of the API.

A registry collects synchronously, so the reading is done first, asynchronously and under the
request's deadline (`read_figures`), and `RedisCollector` only turns what was read into metric
families. Stream figures come from streamproc.monitor (what `GET /api/streams` shows), order
counts and today's revenue from the counters the scripts keep (streamproc.stats), ingest rows from
the hash `streamproc ingest` adds to.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass

import redis.asyncio as aredis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from streamproc.clock import now_ms, utc_day
from streamproc.keys import Keys
from streamproc.monitor import StreamsState, load_streams
from streamproc.replies import text
from streamproc.stats import OrderStats, load_stats

INGEST_OUTCOMES = ("imported", "duplicate", "rejected")


@dataclass(frozen=True, slots=True)
class RedisFigures:
    """Everything one scrape reads from Redis."""

    streams: StreamsState
    stats: OrderStats
    ingest_rows: dict[str, int]


async def read_figures(client: aredis.Redis, keys: Keys) -> RedisFigures:
    """Read the figures (three round trips, concurrently); Redis errors propagate."""
    streams, stats, rows = await asyncio.gather(
        load_streams(client, keys),
        load_stats(client, keys, utc_day(now_ms())),
        client.hgetall(keys.ingest_rows),
    )
    return RedisFigures(streams, stats, {text(k): int(v) for k, v in rows.items()})


class RedisCollector:
    """The families of one scrape; `figures` None means Redis did not answer in time."""

    def __init__(self, figures: RedisFigures | None) -> None:
        self.figures = figures

    def collect(self) -> Iterator[Metric]:
        """streamproc_redis_up always; the rest only when Redis answered."""
        up = GaugeMetricFamily(
            "streamproc_redis_up", "Whether Redis answered this scrape in time (1) or not (0)."
        )
        up.add_metric([], 0 if self.figures is None else 1)
        yield up
        if self.figures is not None:
            yield from _stream_families(self.figures.streams)
            yield from _order_families(self.figures.stats)
            yield _ingest_family(self.figures.ingest_rows)


def _stage_gauge(name: str, documentation: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=["stage"])


def _stream_families(state: StreamsState) -> Iterator[Metric]:
    length = _stage_gauge("streamproc_stream_length", "Entries in a stage's stream.")
    lag = _stage_gauge(
        "streamproc_stream_lag", "Entries of a stage's stream not yet delivered to its group."
    )
    pending = _stage_gauge(
        "streamproc_stream_pending", "Entries delivered to a stage's group and not yet acked."
    )
    oldest = _stage_gauge(
        "streamproc_stream_oldest_pending_age_seconds",
        "Age of a stage's oldest pending entry (0 when none is pending).",
    )
    consumers = _stage_gauge(
        "streamproc_stream_consumers", "Consumers registered in a stage's group."
    )
    for stage in state.stages:
        labels = [stage.stage]
        length.add_metric(labels, stage.length)
        lag.add_metric(labels, stage.lag)
        pending.add_metric(labels, stage.pending)
        oldest.add_metric(labels, stage.oldest_pending_ms / 1000)
        consumers.add_metric(labels, len(stage.consumers))
    yield from (length, lag, pending, oldest, consumers)
    dead = GaugeMetricFamily(
        "streamproc_dead_letter_stream_length", "Entries in the dead-letter stream."
    )
    dead.add_metric([], state.dead_letters)
    yield dead


def _order_families(stats: OrderStats) -> Iterator[Metric]:
    orders = GaugeMetricFamily(
        "streamproc_orders", "Orders by their current state.", labels=["state"]
    )
    for state, count in stats.by_state.items():
        orders.add_metric([state], count)
    yield orders
    revenue = GaugeMetricFamily(
        "streamproc_revenue_today",
        "Revenue of the orders completed today (UTC), in currency units.",
        labels=["currency"],
    )
    for currency, cents in sorted(stats.day.revenue_cents.items()):
        revenue.add_metric([currency], cents / 100)
    yield revenue


def _ingest_family(rows: dict[str, int]) -> Metric:
    family = CounterMetricFamily(
        "streamproc_ingest_rows",
        "CSV rows imported (re-submitted orders included), skipped as duplicates or rejected "
        "by `streamproc ingest`.",
        labels=["outcome"],
    )
    for outcome in INGEST_OUTCOMES:
        family.add_metric([outcome], rows.get(outcome, 0))
    return family
