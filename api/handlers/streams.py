"""`GET /api/streams`: every stage's stream and group, its rate and p95 over the last minute, and
the dead-letter count."""

from __future__ import annotations

import asyncio

import msgspec

from api.endpoints import Call
from streamproc.keys import STAGES
from streamproc.monitor import load_streams
from streamproc.windows import stage_rates


class ConsumerView(msgspec.Struct):
    """One consumer of a stage."""

    name: str
    pending: int
    idle_ms: int


class StageView(msgspec.Struct):
    """One stage's stream and consumer group."""

    stage: str
    length: int
    lag: int
    pending: int
    oldest_pending_age_ms: int
    group_exists: bool
    consumers: list[ConsumerView]
    # Over the last minute, from the windows every consumer flushes: messages settled per
    # second, and the 95th percentile of the time to handle and commit one batch (null: none).
    processed_per_s: float
    p95_seconds: float | None


class StreamsView(msgspec.Struct):
    """Every stage, in workflow order, and the dead letters."""

    stages: list[StageView]
    dead_letters: int


async def streams(call: Call[None, None, None]) -> StreamsView:
    """Length, lag, pending, consumers with idle times, oldest pending age, rate and p95 per
    stage."""
    services = call.services
    state, rates = await asyncio.gather(
        load_streams(services.redis, services.keys),
        stage_rates(services.redis, services.keys, STAGES),
    )
    return StreamsView(
        stages=[
            StageView(
                stage=s.stage,
                length=s.length,
                lag=s.lag,
                pending=s.pending,
                oldest_pending_age_ms=s.oldest_pending_ms,
                group_exists=s.group_exists,
                consumers=[ConsumerView(c.name, c.pending, c.idle_ms) for c in s.consumers],
                processed_per_s=rates[s.stage].processed_per_s,
                p95_seconds=rates[s.stage].p95_seconds,
            )
            for s in state.stages
        ],
        dead_letters=state.dead_letters,
    )
