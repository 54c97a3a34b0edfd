"""The dead-letter stream: list, retry (back to the stage with a fresh budget) and purge."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import msgspec
import redis
import redis.asyncio as aredis

from streamproc.clock import now_ms
from streamproc.errors import ConfigError
from streamproc.keys import READS_FROM, STAGES, Keys
from streamproc.lua import AsyncScripts, SyncScripts
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


class RetryOutcome(msgspec.Struct):
    """What a retry of one dead letter did."""

    id: str
    outcome: str  # retried | missing | conflict
    new_id: str = ""  # the stage entry it became (retried)
    order_state: str = ""  # the order's state now (conflict)


def _retry_call(keys: Keys, letter: DeadLetter) -> tuple[list[str], list[Any]]:
    if letter.stage not in STAGES:
        raise ConfigError(f"dead letter {letter.id} names unknown stage {letter.stage!r}")
    script_keys = [
        keys.dead_letters,
        keys.state_counts,
        keys.order(letter.order_id),
        keys.stream(letter.stage),
    ]
    shared = letter.stage in READS_FROM.values()
    return script_keys, [letter.id, letter.stage, now_ms(), "1" if shared else ""]


def _outcome(dead_id: str, reply: Any) -> RetryOutcome:
    answer = text(reply) if reply else ""
    if not answer:
        return RetryOutcome(dead_id, "missing")
    if answer.startswith("conflict:"):
        return RetryOutcome(dead_id, "conflict", order_state=answer.partition(":")[2])
    return RetryOutcome(dead_id, "retried", new_id=answer)


def _entry_or_none(entries: Any) -> DeadLetter | None:
    return _parse(entries[0][0], entries[0][1]) if entries else None


def retry(client: redis.Redis, keys: Keys, ids: Sequence[str]) -> list[RetryOutcome]:
    """Re-drive dead letters, one outcome per id."""
    scripts = SyncScripts.register(client)
    outcomes = []
    for dead_id in ids:
        try:
            letter = _entry_or_none(client.xrange(keys.dead_letters, min=dead_id, max=dead_id))
        except redis.ResponseError:  # not a stream id at all: not found, like `purge` says
            letter = None
        if letter is None:
            outcomes.append(RetryOutcome(dead_id, "missing"))
            continue
        script_keys, args = _retry_call(keys, letter)
        outcomes.append(_outcome(dead_id, scripts.run("dlq_retry", script_keys, args)))
    return outcomes


async def retry_one(
    client: aredis.Redis, scripts: AsyncScripts, keys: Keys, dead_id: str
) -> RetryOutcome:
    """Re-drive one dead letter (`dead_id` must be a valid stream id)."""
    letter = _entry_or_none(await client.xrange(keys.dead_letters, min=dead_id, max=dead_id))
    if letter is None:
        return RetryOutcome(dead_id, "missing")
    script_keys, args = _retry_call(keys, letter)
    return _outcome(dead_id, await scripts.run("dlq_retry", script_keys, args))


async def page_dead_letters(
    client: aredis.Redis, keys: Keys, after: str | None, limit: int, stage: str | None = None
) -> tuple[list[DeadLetter], str | None]:
    """Up to `limit` dead letters after id `after`, oldest first, and the next page's cursor."""
    start = "-" if after is None else "(" + after
    found: list[DeadLetter] = []
    while len(found) < limit:
        entries = await client.xrange(keys.dead_letters, min=start, max="+", count=limit + 1)
        if not entries:
            return found, None
        for entry_id, fields in entries:
            letter = _parse(entry_id, fields)
            if stage is None or letter.stage == stage:
                if len(found) == limit:
                    return found, found[-1].id
                found.append(letter)
        start = "(" + text(entries[-1][0])
    # Exactly `limit` found; whether more follow is only known by looking.
    more = await client.xrange(keys.dead_letters, min=start, max="+", count=1)
    return found, (found[-1].id if more else None)


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
