"""The stage streams as operators watch them: length, lag, pending, consumers and their idle times.

Asynchronous (the API's view); one pipelined round trip covers every stage and the dead letters.
"""

from __future__ import annotations

from typing import Any

import msgspec
import redis.asyncio

from streamproc.keys import STAGES, Keys
from streamproc.replies import id_key, id_ms, text

# Redis reports no lag after deletions in the unread part; counting past this many is pointless.
LAG_COUNT_CAP = 100_000


class ConsumerState(msgspec.Struct):
    """One consumer of a stage's group."""

    name: str
    pending: int
    idle_ms: int


class StreamState(msgspec.Struct):
    """One stage: its stream and its consumer group."""

    stage: str
    length: int
    lag: int
    pending: int
    oldest_pending_ms: int
    group_exists: bool
    consumers: list[ConsumerState]


class StreamsState(msgspec.Struct):
    """Every stage, and the dead-letter stream's length."""

    stages: list[StreamState]
    dead_letters: int
    server_time_ms: int


def _ok(reply: Any) -> Any:
    return None if isinstance(reply, Exception) else reply


async def _lag(
    client: redis.asyncio.Redis, stream: str, group: dict[str, Any], info: dict[str, Any]
) -> int:
    lag = group.get("lag")
    if lag is not None:
        return int(lag)
    delivered = group.get("last-delivered-id") or b"0-0"
    last = info.get("last-generated-id")
    if last is None or id_key(delivered) >= id_key(last):
        return 0
    entries = await client.xrange(stream, min="(" + text(delivered), max="+", count=LAG_COUNT_CAP)
    return len(entries or [])


async def load_streams(client: redis.asyncio.Redis, keys: Keys) -> StreamsState:
    """The state of every stage's stream(s) and group, and the dead-letter count."""
    reads = [(stage, stream) for stage in STAGES for stream in keys.sources(stage)]
    pipe = client.pipeline(transaction=False)
    pipe.time()
    pipe.xlen(keys.dead_letters)
    for stage, stream in reads:
        group = keys.group(stage)
        pipe.xinfo_stream(stream)
        pipe.xinfo_groups(stream)
        pipe.xinfo_consumers(stream, group)
        pipe.xpending(stream, group)
    replies = await pipe.execute(raise_on_error=False)
    seconds, micros = replies[0]
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    dead = _ok(replies[1]) or 0
    per_stage: dict[str, list[StreamState]] = {stage: [] for stage in STAGES}
    for index, (stage, stream) in enumerate(reads):
        info, groups, consumers, summary = (_ok(r) for r in replies[2 + 4 * index : 6 + 4 * index])
        per_stage[stage].append(
            await _stage(client, keys, stage, stream, now_ms, info, groups, consumers, summary)
        )
    return StreamsState([_merged(parts) for parts in per_stage.values()], int(dead), now_ms)


def _merged(parts: list[StreamState]) -> StreamState:
    """One stage over the streams its group reads (notify: the facts stream and its own)."""
    if len(parts) == 1:
        return parts[0]
    consumers: dict[str, ConsumerState] = {}
    for part in parts:
        for c in part.consumers:
            seen = consumers.get(c.name)
            consumers[c.name] = (
                c
                if seen is None
                else ConsumerState(c.name, seen.pending + c.pending, min(seen.idle_ms, c.idle_ms))
            )
    return StreamState(
        stage=parts[0].stage,
        length=sum(p.length for p in parts),
        lag=sum(p.lag for p in parts),
        pending=sum(p.pending for p in parts),
        oldest_pending_ms=max(p.oldest_pending_ms for p in parts),
        group_exists=all(p.group_exists for p in parts),
        consumers=list(consumers.values()),
    )


async def _stage(
    client: redis.asyncio.Redis,
    keys: Keys,
    stage: str,
    stream: str,
    now_ms: int,
    info: Any,
    groups: Any,
    consumers: Any,
    summary: Any,
) -> StreamState:
    if info is None:
        return StreamState(stage, 0, 0, 0, 0, False, [])
    length = int(info["length"])
    group = next((g for g in groups or [] if text(g["name"]) == keys.group(stage)), None)
    if group is None:
        return StreamState(stage, length, length, 0, 0, False, [])
    oldest = 0
    if summary and summary.get("min"):
        oldest = max(0, now_ms - id_ms(summary["min"]))
    members = [
        ConsumerState(text(c["name"]), int(c["pending"]), int(c["idle"])) for c in consumers or []
    ]
    return StreamState(
        stage=stage,
        length=length,
        lag=await _lag(client, stream, group, info),
        pending=int(group["pending"]),
        oldest_pending_ms=oldest,
        group_exists=True,
        consumers=members,
    )
