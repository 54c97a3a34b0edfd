"""Leaderboard rebuild: recompute every board from the snapshot store and swap it in atomically.

1. lb_rebuild_begin.lua sets the marker and returns the manifest's files and the facts stream's
   unacked range. From then on commit.lua adds each completion to the staging boards too, and the
   snapshot stage registers nothing, so files + unacked entries = every completion before.
2. DuckDB sums the files; the unacked entries are read and summed here; both are merged into the
   staging boards (lb_rebuild_merge.lua, in chunks).
3. lb_rebuild_swap.lua renames the staging boards over the live ones and drops the marker.
Readers see the old boards until the swap, then the new ones: never a partial board.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import msgspec
import redis.asyncio as aredis

from streamproc.analytics.facts import Fact, fact_of
from streamproc.analytics.store import Duck, source_sql
from streamproc.errors import StreamprocError
from streamproc.keys import Keys
from streamproc.lua import AsyncScripts
from streamproc.models import COMPLETED
from streamproc.replies import id_key, text
from streamproc.transport import parse_entry

# The marker outlives a stalled rebuild by this much; each merged chunk renews it.
MARKER_TTL_MS = 120_000
CHUNK_ROWS = 2_000
READ_PAGE = 1_000


class RebuildBusy(StreamprocError):
    """Another rebuild is running."""


class RebuildLost(StreamprocError):
    """The rebuild's marker expired (it stalled for longer than MARKER_TTL_MS)."""


class RebuildReport(msgspec.Struct):
    """What a rebuild did."""

    currencies: list[str]
    customers: int
    products: int
    facts_files: int
    unsnapshotted_orders: int
    seconds: float


@dataclass(slots=True)
class CustomerSum:
    """A customer's completed orders in one currency, summed."""

    cents: int = 0
    orders: int = 0
    name: str = ""
    first: str = ""
    last: str = ""

    def add(self, cents: int, orders: int, name: str, first: str, last: str) -> None:
        """Fold in more orders (the name follows the latest order)."""
        self.cents += cents
        self.orders += orders
        if not self.first or first < self.first:
            self.first = first
        if last > self.last:
            self.last, self.name = last, name


@dataclass(slots=True)
class ProductSum:
    """A SKU's completed lines in one currency, summed."""

    units: int = 0
    cents: int = 0
    orders: int = 0
    name: str = ""
    last: str = ""

    def add(self, units: int, cents: int, orders: int, name: str, last: str) -> None:
        """Fold in more lines (the name follows the latest order that named it)."""
        self.units += units
        self.cents += cents
        self.orders += orders
        if name and last > self.last:
            self.last, self.name = last, name


@dataclass(slots=True)
class Boards:
    """Recomputed boards, by (currency, customer id) and (currency, SKU)."""

    customers: dict[tuple[str, str], CustomerSum] = field(default_factory=dict)
    products: dict[tuple[str, str], ProductSum] = field(default_factory=dict)

    def add_fact(self, fact: Fact) -> None:
        """Fold in one completed order."""
        key = f"{fact.order_date}|{fact.order_id}"
        customer = self.customers.setdefault((fact.currency, str(fact.customer_id)), CustomerSum())
        customer.add(fact.total_cents, 1, fact.customer_name, fact.order_date, key)
        per_sku: dict[str, list[Any]] = {}
        for line in fact.lines:
            units, cents, name = per_sku.get(line.sku, [0, 0, ""])
            per_sku[line.sku] = [
                units + line.quantity,
                cents + line.amount_cents,
                line.name or name,
            ]
        for sku, (units, cents, name) in per_sku.items():
            product = self.products.setdefault((fact.currency, sku), ProductSum())
            product.add(units, cents, 1, name, key)


CUSTOMERS_SQL = """
SELECT currency, customer_id::VARCHAR, sum(total_cents)::BIGINT, count(*),
       arg_max(customer_name, order_date || '|' || order_id), min(order_date),
       max(order_date || '|' || order_id)
FROM {src} WHERE state = 'completed' GROUP BY ALL
"""
PRODUCTS_SQL = """
WITH l AS (
  SELECT currency, order_id, order_date || '|' || order_id AS k, unnest(lines) AS line
  FROM {src} WHERE state = 'completed'
)
SELECT currency, line.sku, sum(line.quantity)::BIGINT, sum(line.amount_cents)::BIGINT,
       count(DISTINCT order_id),
       coalesce(arg_max(line.name, k) FILTER (WHERE line.name <> ''), ''),
       coalesce(max(k) FILTER (WHERE line.name <> ''), '')
FROM l GROUP BY ALL
"""


def sum_files(paths: list[str]) -> Boards:
    """The boards of every completed fact in the given store files (blocking)."""
    boards = Boards()
    if not paths:
        return boards
    cur = Duck.cursor()
    src = source_sql(paths)
    for currency, customer, cents, orders, name, first, last in cur.execute(
        CUSTOMERS_SQL.format(src=src)
    ).fetchall():
        boards.customers[(currency, customer)] = CustomerSum(cents, orders, name, first, last)
    for currency, sku, units, cents, orders, name, last in cur.execute(
        PRODUCTS_SQL.format(src=src)
    ).fetchall():
        boards.products[(currency, sku)] = ProductSum(units, cents, orders, name, last)
    return boards


async def unacked_completions(
    client: aredis.Redis, stream: str, group: str, delivered: str, top: str
) -> list[Fact]:
    """Completed facts among the stream's entries not acked when the rebuild began."""
    ids: list[bytes] = []
    start = "-"
    while delivered != "0-0":
        rows = await client.xpending_range(stream, group, min=start, max=delivered, count=READ_PAGE)
        ids += [cast(bytes, row["message_id"]) for row in rows]
        if len(rows) < READ_PAGE:
            break
        ms, seq = id_key(rows[-1]["message_id"])
        start = f"{ms}-{seq + 1}"
    entries: list[tuple[bytes, Any]] = []
    for i in range(0, len(ids), READ_PAGE):
        async with client.pipeline(transaction=False) as pipe:
            for entry_id in ids[i : i + READ_PAGE]:
                pipe.xrange(stream, min=entry_id, max=entry_id)
            for found in await pipe.execute():
                entries += found
    if id_key(top) > id_key(delivered):
        start = "(" + delivered
        while True:
            page = cast(
                list[tuple[bytes, Any]],
                await client.xrange(stream, min=start, max=top, count=READ_PAGE),
            )
            entries += page
            if len(page) < READ_PAGE:
                break
            start = "(" + text(page[-1][0])
    facts = []
    for entry_id, fields in entries:
        message = parse_entry(entry_id, fields)
        if message.order is not None and message.state == COMPLETED:
            facts.append(fact_of(message))
    return facts


def _rows(boards: Boards) -> Iterator[list[Any]]:
    for (currency, customer), c in boards.customers.items():
        yield ["c", currency, customer, c.cents, "", c.orders, c.name, c.first, c.last]
    for (currency, sku), p in boards.products.items():
        yield ["p", currency, sku, p.units, p.cents, p.orders, p.name, "", p.last]


async def rebuild(
    client: aredis.Redis, scripts: AsyncScripts, keys: Keys, store_root: Path
) -> RebuildReport:
    """Recompute every leaderboard and swap it in; raises RebuildBusy / RebuildLost."""
    started = time.monotonic()
    token = uuid.uuid4().hex
    staging = keys.leaderboard_prefix(staging=True)
    begun = await scripts.run(
        "lb_rebuild_begin",
        [
            keys.leaderboard_rebuild,
            keys.leaderboard_currencies(staging=True),
            keys.stream("snapshot"),
            keys.snapshot_files,
        ],
        [token, MARKER_TTL_MS, staging, keys.group("snapshot")],
    )
    if text(begun[0]) == "busy":
        raise RebuildBusy("a leaderboard rebuild is already running")
    delivered, top = text(begun[1]), text(begun[2])
    files = [text(name) for name in begun[3:]]
    try:
        boards = await asyncio.to_thread(sum_files, sorted(str(store_root / n) for n in files))
        late = await unacked_completions(
            client, keys.stream("snapshot"), keys.group("snapshot"), delivered, top
        )
        if late:
            extra = Boards()
            for fact in late:
                extra.add_fact(fact)
            _fold(boards, extra)
        chunk: list[Any] = []
        merge_keys = [keys.leaderboard_rebuild, keys.leaderboard_currencies(staging=True)]
        for row in _rows(boards):
            chunk += row
            if len(chunk) >= CHUNK_ROWS * 9:
                await _merge(scripts, merge_keys, token, staging, chunk)
                chunk = []
        if chunk:
            await _merge(scripts, merge_keys, token, staging, chunk)
        swapped = await scripts.run(
            "lb_rebuild_swap",
            [
                keys.leaderboard_rebuild,
                keys.leaderboard_currencies(),
                keys.leaderboard_currencies(staging=True),
            ],
            [token, keys.leaderboard_prefix(), staging],
        )
        if text(swapped) != "ok":
            raise RebuildLost("the rebuild stalled and its marker expired; run it again")
    except BaseException:
        # Give up the marker at once so the snapshot stage and commits go back to normal.
        if text(await client.get(keys.leaderboard_rebuild)) == token:
            await client.delete(keys.leaderboard_rebuild)
        raise
    return RebuildReport(
        currencies=sorted({c for c, _ in boards.customers} | {c for c, _ in boards.products}),
        customers=len(boards.customers),
        products=len(boards.products),
        facts_files=len(files),
        unsnapshotted_orders=len(late),
        seconds=round(time.monotonic() - started, 3),
    )


def _fold(into: Boards, extra: Boards) -> None:
    for key, c in extra.customers.items():
        into.customers.setdefault(key, CustomerSum()).add(
            c.cents, c.orders, c.name, c.first, c.last
        )
    for key, p in extra.products.items():
        into.products.setdefault(key, ProductSum()).add(p.units, p.cents, p.orders, p.name, p.last)


async def _merge(
    scripts: AsyncScripts, keys: list[str], token: str, staging: str, chunk: list[Any]
) -> None:
    status = await scripts.run("lb_rebuild_merge", keys, [token, MARKER_TTL_MS, staging, *chunk])
    if text(status) != "ok":
        raise RebuildLost("the rebuild stalled and its marker expired; run it again")
