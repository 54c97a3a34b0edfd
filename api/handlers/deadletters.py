"""`GET /api/dlq` (paged) and `POST /api/dlq/{id}/retry`."""

from __future__ import annotations

import msgspec

from api.endpoints import Call
from api.errors import Conflict, NotFound
from api.types import Limit, StageName, StreamId, Timestamp, timestamp
from streamproc.deadletters import DeadLetter, page_dead_letters, retry_one


class DeadLetterQuery(msgspec.Struct):
    """Query of /api/dlq: page size, the cursor from the previous page, one stage only."""

    limit: Limit = 50
    cursor: StreamId | None = None
    stage: StageName | None = None


class DeadLetterView(msgspec.Struct):
    """One dead letter."""

    id: str
    stage: str
    original_id: str
    order_id: str
    attempt: int
    deliveries: int
    error: str
    previous_state: str | None
    dead_lettered_at: Timestamp | None


class DeadLetterPage(msgspec.Struct):
    """A page of dead letters, oldest first; pass next_cursor as ?cursor= for the next one."""

    items: list[DeadLetterView]
    next_cursor: str | None
    total: int


class DeadLetterPath(msgspec.Struct):
    """Path of /api/dlq/{id}/retry."""

    id: StreamId


class RetryResult(msgspec.Struct):
    """The dead letter went back to its stage as entry new_id."""

    id: str
    stage_entry_id: str


def _view(letter: DeadLetter) -> DeadLetterView:
    return DeadLetterView(
        id=letter.id,
        stage=letter.stage,
        original_id=letter.original_id,
        order_id=letter.order_id,
        attempt=letter.attempt,
        deliveries=letter.deliveries,
        error=letter.error,
        previous_state=letter.previous_state or None,
        dead_lettered_at=timestamp(letter.dead_lettered_at_ms),
    )


async def list_dead_letters(call: Call[None, DeadLetterQuery, None]) -> DeadLetterPage:
    """Dead letters, oldest first, a page at a time."""
    q, services = call.query, call.services
    letters, cursor = await page_dead_letters(
        services.redis, services.keys, q.cursor, q.limit, q.stage
    )
    total = await services.redis.xlen(services.keys.dead_letters)
    return DeadLetterPage([_view(x) for x in letters], cursor, int(total))


async def retry_dead_letter(call: Call[DeadLetterPath, None, None]) -> RetryResult:
    """Send a dead letter back to its stage with a fresh delivery budget."""
    services = call.services
    outcome = await retry_one(services.redis, services.scripts, services.keys, call.path.id)
    if outcome.outcome == "missing":
        raise NotFound(f"Dead letter {call.path.id} not found.")
    if outcome.outcome == "conflict":
        raise Conflict(
            f"Dead letter {call.path.id} was not retried: its order is "
            f"{outcome.order_state} now. Purge it instead."
        )
    return RetryResult(outcome.id, outcome.new_id)
