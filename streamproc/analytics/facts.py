"""A fact: one terminal order as the analytics store holds it (one Parquet row)."""

from __future__ import annotations

import msgspec

from streamproc.replies import id_key
from streamproc.transport import Message

# Stream ids (ms-seq) fold into one sortable integer; a millisecond never holds 2^20 entries.
SEQ_BITS = 20


class FactLine(msgspec.Struct):
    """One order line: units and their amount in cents."""

    sku: str
    name: str
    quantity: int
    amount_cents: int


class Fact(msgspec.Struct):
    """One terminal outcome of one order attempt.

    `seq` orders the facts of an order (the facts stream id); `prior` says an earlier fact of the
    same order exists (the order was re-submitted or its dead letter retried), so only that order's
    latest fact counts.
    """

    seq: int
    order_id: str
    attempt: int
    state: str
    prior: bool
    customer_id: int
    customer_name: str
    currency: str
    day: str  # order_date's UTC day, YYYY-MM-DD
    order_date: str  # ISO 8601 UTC with Z
    total_cents: int
    items: int
    lines: list[FactLine]
    terminal_at_ms: int


# DuckDB types for reading the NDJSON a snapshot writes (field order = Fact's).
COLUMNS: dict[str, str] = {
    "seq": "BIGINT",
    "order_id": "VARCHAR",
    "attempt": "INTEGER",
    "state": "VARCHAR",
    "prior": "BOOLEAN",
    "customer_id": "BIGINT",
    "customer_name": "VARCHAR",
    "currency": "VARCHAR",
    "day": "DATE",
    "order_date": "VARCHAR",
    "total_cents": "BIGINT",
    "items": "BIGINT",
    "lines": "STRUCT(sku VARCHAR, name VARCHAR, quantity BIGINT, amount_cents BIGINT)[]",
    "terminal_at_ms": "BIGINT",
}


def seq_of(msg_id: bytes | str) -> int:
    """A stream entry id as one integer that sorts like the id."""
    ms, n = id_key(msg_id)
    return (ms << SEQ_BITS) | min(n, (1 << SEQ_BITS) - 1)


def fact_of(message: Message) -> Fact:
    """The fact a facts-stream entry records (the entry must carry a decoded order)."""
    order = message.order
    if order is None:
        raise ValueError(f"entry {message.msg_id!r} has no usable order")
    lines = [
        FactLine(ln.sku, ln.name, ln.quantity, ln.quantity * ln.unit_price_cents)
        for ln in order.lines
    ]
    return Fact(
        seq=seq_of(message.msg_id),
        order_id=message.order_id,
        attempt=message.attempt,
        state=message.state,
        prior=message.prior,
        customer_id=order.customer_id,
        customer_name=order.customer_name,
        currency=order.currency,
        day=order.order_date[:10],
        order_date=order.order_date,
        total_cents=sum(ln.amount_cents for ln in lines),
        items=sum(ln.quantity for ln in lines),
        lines=lines,
        terminal_at_ms=id_key(message.msg_id)[0],
    )
