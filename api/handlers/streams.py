"""`GET /api/streams`: every stage's stream and group, and the dead-letter count."""

from __future__ import annotations

import msgspec

from api.endpoints import Call
from streamproc.monitor import load_streams


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


class StreamsView(msgspec.Struct):
    """Every stage, in workflow order, and the dead letters."""

    stages: list[StageView]
    dead_letters: int


async def streams(call: Call[None, None, None]) -> StreamsView:
    """Length, lag, pending, consumers with idle times and oldest pending age per stage."""
    state = await load_streams(call.services.redis, call.services.keys)
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
            )
            for s in state.stages
        ],
        dead_letters=state.dead_letters,
    )
