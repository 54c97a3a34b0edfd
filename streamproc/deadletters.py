"""The dead-letter stream: list, retry (back to the stage with a fresh budget) and purge."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import msgspec
import redis

from streamproc.errors import ConfigError
from streamproc.keys import STAGES, Keys
from streamproc.lua import SyncScripts
from streamproc.replies import text


class DeadLetter(msgspec.Struct):
    """One dead letter: where it came from, how often it was tried, and why it failed."""

    id: str
    stage: str
    original_id: str
    order_id: str
    attempt: int
    deliveries: int
    error: str
    previous_state: str
    dead_lettered_at_ms: int


def _parse(entry_id: Any, fields: Any) -> DeadLetter:
    return DeadLetter(
        id=text(entry_id),
        stage=text(fields.get(b"stage")),
        original_id=text(fields.get(b"id")),
        order_id=text(fields.get(b"o")),
        attempt=int(fields.get(b"a") or 1),
        deliveries=int(fields.get(b"deliveries") or 0),
        error=text(fields.get(b"error")),
        previous_state=text(fields.get(b"prev")),
        dead_lettered_at_ms=int(fields.get(b"at") or 0),
    )


def iter_dead_letters(
    client: redis.Redis, keys: Keys, stage: str | None = None, page: int = 500
) -> Iterator[DeadLetter]:
    """Every dead letter, oldest first, optionally of one stage."""
    start = "-"
    while True:
        entries = client.xrange(keys.dead_letters, min=start, max="+", count=page)
        if not entries:
            return
        for entry_id, fields in entries:
            letter = _parse(entry_id, fields)
            if stage is None or letter.stage == stage:
                yield letter
        start = "(" + text(entries[-1][0])


def retry(client: redis.Redis, keys: Keys, ids: Sequence[str]) -> tuple[int, list[str]]:
    """Re-drive dead letters; returns (retried, ids not found)."""
    scripts = SyncScripts.register(client)
    retried, missing = 0, []
    for dead_id in ids:
        try:
            found = client.xrange(keys.dead_letters, min=dead_id, max=dead_id)
        except redis.ResponseError:  # not a stream id at all: not found, like `purge` says
            found = []
        if not found:
            missing.append(dead_id)
            continue
        letter = _parse(found[0][0], found[0][1])
        if letter.stage not in STAGES:
            raise ConfigError(f"dead letter {dead_id} names unknown stage {letter.stage!r}")
        new_id = scripts.run(
            "dlq_retry",
            [
                keys.dead_letters,
                keys.state_counts,
                keys.order(letter.order_id),
                keys.stream(letter.stage),
            ],
            [dead_id, letter.stage, int(time.time() * 1000)],
        )
        if new_id:
            retried += 1
        else:
            missing.append(dead_id)
    return retried, missing


def purge(client: redis.Redis, keys: Keys, ids: Sequence[str]) -> int:
    """Delete dead letters for good; returns how many were deleted."""
    deleted = 0
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        if chunk:
            deleted += int(client.xdel(keys.dead_letters, *chunk))
    return deleted


def all_ids(client: redis.Redis, keys: Keys, stage: str | None = None) -> list[str]:
    """Ids of every dead letter (of one stage)."""
    return [letter.id for letter in iter_dead_letters(client, keys, stage)]
