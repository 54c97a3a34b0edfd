"""A fact: one terminal order as the analytics store holds it (one Parquet row)."""

from __future__ import annotations

import msgspec

from streamproc.models import Order, encode_order
from streamproc.replies import id_key
from streamproc.transport import Message

# Stream ids (ms-seq) fold into one sortable integer; a millisecond never holds 2^20 entries.
SEQ_BITS = 20


# The store's columns and their DuckDB types: one row per terminal outcome of one order attempt.
# `seq` orders the facts of an order (its facts-stream id); `prior` says an earlier fact of the
# same order exists (re-submitted, or its dead letter retried), so only the latest one counts;
# `day` is order_date's UTC day; money is in cents.
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


# -- the fast path: facts-stream entries → NDJSON rows DuckDB turns into facts ---------------------
# The snapshot stage writes one small row per entry, embedding the order payload as it is, and
# DuckDB derives every fact column from it (FACTS_FROM_ROWS), so Python does no per-order object
# work beyond validating the payload. The result has exactly the columns and types of COLUMNS.
ROW_COLUMNS = (
    "{'seq': 'BIGINT', 'attempt': 'INTEGER', 'state': 'VARCHAR', 'prior': 'BOOLEAN', 'd': 'JSON'}"
)
FACTS_FROM_ROWS = """
SELECT seq, d->>'$[0]' AS order_id, attempt, state, prior,
       (d->>'$[1]')::BIGINT AS customer_id, d->>'$[2]' AS customer_name, d->>'$[3]' AS currency,
       (d->>'$[4]')[1:10]::DATE AS day, d->>'$[4]' AS order_date,
       list_sum([x.amount_cents FOR x IN lines])::BIGINT AS total_cents,
       list_sum([x.quantity FOR x IN lines])::BIGINT AS items,
       lines, seq >> {bits} AS terminal_at_ms
FROM (
  SELECT *, [
      {{'sku': x->>'$[0]', 'name': x->>'$[1]', 'quantity': (x->>'$[2]')::BIGINT,
        'amount_cents': (x->>'$[2]')::BIGINT * (x->>'$[3]')::BIGINT}}
      FOR x IN (d->'$[5]')::JSON[]] AS lines
  FROM {source}
)
"""
TERMINAL = frozenset({b"completed", b"failed", b"rolled_back", b"dead_lettered"})
_check_order = msgspec.json.Decoder(Order)


def fact_row(msg_id: bytes, attempt: bytes, state: bytes, prior: bool, payload: bytes) -> bytes:
    """One NDJSON row for FACTS_FROM_ROWS; raises ValueError when the entry is unusable."""
    if not attempt.isdigit() or state not in TERMINAL:
        raise ValueError(f"entry {msg_id!r}: attempt {attempt!r} / state {state!r}")
    try:
        _check_order.decode(payload)  # the shape DuckDB relies on, checked at C speed
    except msgspec.DecodeError as exc:  # ValidationError is a subclass
        raise ValueError(f"entry {msg_id!r}: {exc}") from None
    return b'{"seq":%d,"attempt":%s,"state":"%s","prior":%s,"d":%s}\n' % (
        seq_of(msg_id),
        attempt,
        state,
        b"true" if prior else b"false",
        payload,
    )


def row_of_entry(msg_id: bytes, fields: list[bytes]) -> tuple[bytes, bool] | None:
    """fact_row from a raw entry as commit.lua writes it (o, a, s, d [, c] [, r] [, b]), and
    whether the leaderboards counted it already (on_boards); None for any other entry."""
    n = len(fields)
    if 8 <= n <= 14 and fields[2] == b"a" and fields[4] == b"s" and fields[6] == b"d":
        prior = pending = False
        for i in range(8, n - 1, 2):
            name = fields[i]
            if name == b"r":
                prior = fields[i + 1] == b"1"
            elif name == b"b":
                pending = fields[i + 1] == b"1"
        state = fields[5]
        try:
            row = fact_row(msg_id, fields[3], state, prior, fields[7])
        except ValueError:
            return None
        return row, on_boards(state == b"completed", pending)
    return None


def on_boards(completed: bool, pending: bool) -> bool:
    """Whether a fact is on the leaderboards before its file is registered: a completion an
    earlier version counted as it committed (its entry has no b=1)."""
    return completed and not pending


def row_of_message(message: Message) -> bytes:
    """fact_row of an already decoded entry (reclaimed or re-read ones)."""
    if message.order is None:
        raise ValueError(f"entry {message.msg_id!r} has no usable order")
    return fact_row(
        message.msg_id,
        str(message.attempt).encode(),
        message.state.encode(),
        message.prior,
        encode_order(message.order),
    )
