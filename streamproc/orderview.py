"""One order as stored: its state, payload, payment record and timeline.

One round trip for an order paid or declined in its first attempt: the payment stage keeps the
gateway's outcome and time in the order hash (field p, gateway.payment_note), and the amount and
currency charged are the order's own. Otherwise (not at the gateway yet, re-submitted, or paid
before the note carried the time) the ledger is read: the order's ledger bucket, which its
creation ms names, then, only for attempts the bucket does not hold, the hash of results
recorded before buckets.
"""

from __future__ import annotations

import re

import msgspec
import redis.asyncio

from streamproc.gateway import (
    ledger_reads,
    ledger_results,
    parse_record,
    read_payment_note,
    successful_charges,
)
from streamproc.keys import Keys
from streamproc.models import (
    COMPLETED,
    DEAD_LETTERED,
    FAILED,
    PAID,
    PENDING,
    RESERVED,
    ROLLED_BACK,
    Order,
    decode_order,
)
from streamproc.rawpipe import pipelined
from streamproc.replies import text

ORDER_FIELDS = ("s", "a", "k", "d", "p", "e", "c", "u", "h")

# The history's one-letter state codes: the same table as ORDER_CODES in lua/lib/order.lua.
CODE_STATES = {
    "p": PENDING,
    "r": RESERVED,
    "a": PAID,
    "c": COMPLETED,
    "f": FAILED,
    "b": ROLLED_BACK,
    "d": DEAD_LETTERED,
}
_CODED_STEP = re.compile(r"([a-z])(=?)(-?[0-9]+)")
_OLD_STEP = re.compile(r"([^@]+)@(?:\+(-?[0-9]+)|([0-9]+))")


class TimelineStep(msgspec.Struct):
    """The order entered `state` at `at_ms`."""

    state: str
    at_ms: int


class PaymentRecord(msgspec.Struct):
    """The gateway ledger's first result for the order's current attempt, and the successful
    charges over all its attempts (counted from the ledger)."""

    outcome: str  # ok | declined | "" when the gateway was never called
    amount_cents: int
    currency: str
    recorded_ms: int
    charges: int


class StoredOrder(msgspec.Struct):
    """Everything stored about one order."""

    order: Order
    state: str
    attempt: int
    next_stage: str
    note: str
    error: str
    created_ms: int
    updated_ms: int
    timeline: list[TimelineStep]
    payment: PaymentRecord


def parse_timeline(raw: str, created_ms: int = 0) -> list[TimelineStep]:
    """The stored history as steps, oldest first, from any format the scripts ever wrote.

    Now (lib/order.lua): per step a one-letter code and the ms after `created_ms`, no separator
    (`p0r1113a1186c1250`, `r-5`), or `<code>=<ms>` when the order has no creation time. Before:
    `state@+<ms after created_ms>;…` or `state@<ms>;…`. Malformed parts and unknown codes are
    skipped.
    """
    steps: list[TimelineStep] = []
    for part in raw.split(";"):
        if "@" in part:
            old = _OLD_STEP.fullmatch(part)
            if old:
                state, after, at = old.groups()
                at_ms = int(at) if after is None else created_ms + int(after)
                steps.append(TimelineStep(state, at_ms))
        else:
            steps += (
                TimelineStep(CODE_STATES[code], int(at) if absolute else created_ms + int(at))
                for code, absolute, at in _CODED_STEP.findall(part)
                if code in CODE_STATES
            )
    return steps


def order_timeline(
    history: bytes | str | None, created: bytes | str | None, updated: bytes | str | None
) -> tuple[list[TimelineStep], int]:
    """The stored fields h, c and u (as read: bytes, str or None) as the timeline and the time of
    the last change (ms).

    ingest.lua stores a new order without h: it is pending since c. The scripts no longer store
    u: the last step's time is the update time. Hashes written before have a u equal to that
    step's time, so the step is read first either way.
    """
    created_text, updated_text = text(created), text(updated)
    created_ms = int(created_text) if created_text.isdigit() else 0
    if history is not None:
        steps = parse_timeline(text(history), created_ms)
    else:
        steps = [TimelineStep("pending", created_ms)] if created_text else []
    if steps:
        return steps, steps[-1].at_ms
    return steps, int(updated_text) if updated_text.isdigit() else created_ms


def _payment(record: bytes | None, charges: int) -> PaymentRecord:
    if not record:
        return PaymentRecord("", 0, "", 0, charges)
    result = parse_record(record)
    return PaymentRecord(
        "ok" if result.approved else "declined",
        result.amount_cents,
        result.currency,
        result.recorded_ms,
        charges,
    )


async def load_order(client: redis.asyncio.Redis, keys: Keys, order_id: str) -> StoredOrder | None:
    """The stored order, or None when there is no such order."""
    (order_fields,) = await pipelined(client, [("HMGET", keys.order(order_id), *ORDER_FIELDS)])
    state, attempt_raw, stage, payload, note, error, created, updated, history = order_fields
    if state is None or payload is None:
        return None
    # ingest.lua leaves a, k and h out of a new order's hash: these are their values.
    attempt = int(attempt_raw or 1)
    timeline, updated_ms = order_timeline(history, created, updated)
    created_ms = int(created) if created and created.isdigit() else 0
    order = decode_order(payload)
    outcome, recorded_ms = read_payment_note(text(note), created_ms)
    if attempt == 1 and recorded_ms is not None:
        # The note is the ledger's first result for the order's only key (the commit applies the
        # payment stage's first decision, and every call of a key returns its first result).
        payment = PaymentRecord(
            outcome, order.total_cents, order.currency, recorded_ms, int(outcome == "ok")
        )
    else:
        payment = await _ledger_payment(client, keys, order_id, created_ms, attempt)
    return StoredOrder(
        order=order,
        state=text(state),
        attempt=attempt,
        next_stage="reserve" if stage is None else text(stage),
        note=outcome,
        error=text(error),
        created_ms=created_ms,
        updated_ms=updated_ms,
        timeline=timeline,
        payment=payment,
    )


async def _ledger_payment(
    client: redis.asyncio.Redis, keys: Keys, order_id: str, created_ms: int, attempt: int
) -> PaymentRecord:
    """The current attempt's ledger result and the charges over every attempt, from the ledger."""
    # A re-submitted order was charged under one more key per attempt; the ledger keeps them in
    # the bucket of the order's creation ms (or, recorded before buckets, in the old hash).
    bucket_read, before_read = ledger_reads(keys, order_id, created_ms, attempt)
    (records,) = await pipelined(client, [bucket_read])
    if None in records:
        # Not in its bucket: recorded before buckets, or never (the gateway not called yet). Only
        # then is the old hash read, one round trip more.
        (before,) = await pipelined(client, [before_read])
        records = ledger_results(records, before)
    return _payment(records[-1], successful_charges(records))
