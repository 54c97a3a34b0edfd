"""`streamproc status` and `wait`: streams, order states, dead letters and stock, from Redis."""

from __future__ import annotations

import time
from typing import Any

import msgspec
import redis
from redis.exceptions import ResponseError

from streamproc.keys import STAGES, Keys
from streamproc.models import STATES, TERMINAL_STATES
from streamproc.replies import id_key, id_ms, text
from streamproc.stock import show_stock


class StageStatus(msgspec.Struct):
    """One stage's stream and group."""

    length: int
    lag: int
    pending: int
    consumers: int
    oldest_pending_ms: int


class StockStatus(msgspec.Struct):
    """One SKU's stock columns."""

    available: int
    reserved: int
    committed: int


class Status(msgspec.Struct):
    """What `status --json` prints."""

    stages: dict[str, StageStatus]
    orders: dict[str, int]
    dead_letters: int
    stock: dict[str, StockStatus]
    # Registered snapshot files whose completions are still being added to the leaderboards.
    boards_pending: int = 0

    def drained(self) -> bool:
        """Every stage has nothing left to read or ack, no order is mid-workflow, and the
        leaderboards hold every registered file."""
        streams_idle = all(s.lag == 0 and s.pending == 0 for s in self.stages.values())
        in_progress = sum(
            v for k, v in self.orders.items() if k in STATES and k not in TERMINAL_STATES
        )
        return streams_idle and in_progress == 0 and self.boards_pending == 0


def _group_lag(client: redis.Redis, stream: str, group: dict[str, Any], last_id: Any) -> int:
    lag = group.get("lag")
    if lag is not None:
        return int(lag)
    # Redis reports no lag after deletions; count the undelivered entries instead.
    delivered = group.get("last-delivered-id") or b"0-0"
    if last_id is None or id_key(delivered) >= id_key(last_id):
        return 0
    start = delivered.decode() if isinstance(delivered, bytes) else str(delivered)
    return len(client.xrange(stream, min="(" + start, max="+", count=1_000_000) or [])


def stage_status(client: redis.Redis, keys: Keys, stage: str, now_ms: int) -> StageStatus:
    """Length, lag, pending, consumers and oldest pending age of one stage, over the streams
    its group reads (notify: the facts stream and its own)."""
    parts = [
        _stream_status(client, stream, keys.group(stage), now_ms) for stream in keys.sources(stage)
    ]
    return StageStatus(
        length=sum(p.length for p in parts),
        lag=sum(p.lag for p in parts),
        pending=sum(p.pending for p in parts),
        consumers=max(p.consumers for p in parts),
        oldest_pending_ms=max(p.oldest_pending_ms for p in parts),
    )


def _stream_status(client: redis.Redis, stream: str, name: str, now_ms: int) -> StageStatus:
    try:
        info = client.xinfo_stream(stream)
        groups = client.xinfo_groups(stream)
    except ResponseError:
        return StageStatus(0, 0, 0, 0, 0)
    group = next((g for g in groups if text(g["name"]) == name), None)
    if group is None:
        return StageStatus(int(info["length"]), int(info["length"]), 0, 0, 0)
    pending = int(group["pending"])
    oldest = 0
    if pending:
        summary = client.xpending(stream, name)
        if summary.get("min"):
            oldest = max(0, now_ms - id_ms(summary["min"]))
    return StageStatus(
        length=int(info["length"]),
        lag=_group_lag(client, stream, group, info.get("last-generated-id")),
        pending=pending,
        consumers=int(group["consumers"]),
        oldest_pending_ms=oldest,
    )


def collect_status(client: redis.Redis, keys: Keys) -> Status:
    """Everything `status` shows, read from the server."""
    seconds, micros = client.time()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    stages = {stage: stage_status(client, keys, stage, now_ms) for stage in STAGES}
    counts = {text(k): int(v) for k, v in client.hgetall(keys.state_counts).items()}
    orders = {state: counts.get(state, 0) for state in STATES}
    orders["total"] = sum(orders.values())
    try:
        dead = int(client.xlen(keys.dead_letters))
    except ResponseError:
        dead = 0
    stock = {
        row.sku: StockStatus(row.available, row.reserved, row.committed)
        for row in show_stock(client, keys)
    }
    boards = int(client.hlen(keys.leaderboard_pending))
    return Status(
        stages=stages, orders=orders, dead_letters=dead, stock=stock, boards_pending=boards
    )


def wait_drained(
    client: redis.Redis, keys: Keys, timeout_s: float, poll_s: float = 0.2
) -> Status | None:
    """Poll until drained; the final status, or None on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = collect_status(client, keys)
        if status.drained():
            return status
        if time.monotonic() >= deadline:
            return None
        time.sleep(poll_s)
