"""`streamproc orders export`: every order with its state, lines, money and payment, for audits."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from itertools import islice
from typing import IO

import msgspec
import redis

from streamproc.clock import iso_ms
from streamproc.gateway import (
    ledger_keys,
    ledger_results,
    read_payment_note,
    successful_charges,
)
from streamproc.keys import Keys, record_bucket
from streamproc.models import decode_order
from streamproc.money import format_cents
from streamproc.orderview import TimelineStep, order_timeline

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
_FIELDS = (b"s", b"a", b"d", b"p", b"c", b"u", b"h")


class ExportLine(msgspec.Struct):
    """One order line in the export."""

    sku: str
    name: str
    quantity: int
    unit_price_cents: int


class ExportedOrder(msgspec.Struct):
    """One exported order (reconciliation record)."""

    order_id: str
    state: str
    customer_id: int
    customer_name: str
    email: str
    currency: str
    order_date: str
    total_cents: int
    total: str
    lines: list[ExportLine]
    payment: str
    charges: int
    attempts: int
    created_at: str
    updated_at: str
    history: str


COLUMNS = tuple(ExportedOrder.__struct_fields__)


def _iso(ms: bytes | None) -> str:
    return iso_ms(int(ms)) if ms else ""


def _history(steps: list[TimelineStep]) -> str:
    # Stored as codes and ms (orderview.parse_timeline); exported as state@<ISO time> for people.
    return ";".join(f"{step.state}@{iso_ms(step.at_ms)}" for step in steps)


def iter_orders(client: redis.Redis, keys: Keys, page: int = 500) -> Iterator[ExportedOrder]:
    """Every order in the namespace (SCAN order, pages of `page`), with its successful charges
    counted from the gateway's ledger."""
    prefix = keys.order_prefix.encode()
    batch: list[bytes] = []
    # SCAN may return a key twice while the keyspace rehashes; an audit must list each order once.
    seen: set[bytes] = set()
    for key in client.scan_iter(match=keys.order_pattern, count=page):
        if key in seen:
            continue
        seen.add(key)
        batch.append(key)
        if len(batch) >= page:
            yield from _load(client, keys, batch, prefix)
            batch = []
    if batch:
        yield from _load(client, keys, batch, prefix)


def _load(
    client: redis.Redis, keys: Keys, batch: list[bytes], prefix: bytes
) -> Iterator[ExportedOrder]:
    pipe = client.pipeline(transaction=False)
    for key in batch:
        pipe.hmget(key, list(_FIELDS))
    rows = pipe.execute()
    ids = [key[len(prefix) :].decode() for key in batch]
    # The ledger keys of the page's orders (attempts 1..a each): one HMGET per order's bucket and
    # one for all of them in the hash of results recorded before buckets, in one round trip.
    per_order = [ledger_keys(oid, int(row[1] or 1)) for oid, row in zip(ids, rows, strict=True)]
    pipe = client.pipeline(transaction=False)
    for oid, row, names in zip(ids, rows, per_order, strict=True):
        created = int(row[4]) if row[4] and row[4].isdigit() else 0
        pipe.hmget(keys.gateway_bucket(record_bucket(created, oid)), names)
    pipe.hmget(keys.gateway_ledger, [k for ks in per_order for k in ks])
    *bucketed, before = pipe.execute()
    earlier = iter(before)
    for order_id, row, ledger, found in zip(ids, rows, per_order, bucketed, strict=True):
        charged = successful_charges(ledger_results(found, list(islice(earlier, len(ledger)))))
        state, attempt, payload, payment, created, updated, history = row
        if payload is None:
            continue  # deleted between SCAN and read
        order = decode_order(payload)
        steps, updated_ms = order_timeline(history, created, updated)
        yield ExportedOrder(
            order_id=order_id,
            state=(state or b"").decode(),
            customer_id=order.customer_id,
            customer_name=order.customer_name,
            email=order.email,
            currency=order.currency,
            order_date=order.order_date,
            total_cents=order.total_cents,
            total=format_cents(order.total_cents),
            lines=[
                ExportLine(ln.sku, ln.name, ln.quantity, ln.unit_price_cents) for ln in order.lines
            ],
            # The outcome alone, as before the note carried the gateway's time.
            payment=read_payment_note((payment or b"").decode(), 0)[0],
            charges=charged,
            attempts=int(attempt or 1),
            created_at=_iso(created),
            updated_at=iso_ms(updated_ms) if updated_ms else "",
            history=_history(steps),
        )


def neutralise(cell: str) -> str:
    """Prefix cells a spreadsheet would run as a formula with a quote."""
    return "'" + cell if cell.startswith(FORMULA_PREFIXES) else cell


def write_csv(orders: Iterator[ExportedOrder], out: IO[str]) -> int:
    """CSV with lines as JSON in one cell; returns the number of orders written."""
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    count = 0
    for order in orders:
        values = msgspec.structs.astuple(order)
        cells = [msgspec.json.encode(v).decode() if isinstance(v, list) else str(v) for v in values]
        writer.writerow([neutralise(c) for c in cells])
        count += 1
    return count


def write_jsonl(orders: Iterator[ExportedOrder], out: IO[str]) -> int:
    """One JSON object per line; returns the number of orders written."""
    encoder = msgspec.json.Encoder()
    count = 0
    for order in orders:
        out.write(encoder.encode(order).decode())
        out.write("\n")
        count += 1
    return count
