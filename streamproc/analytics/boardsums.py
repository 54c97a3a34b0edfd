"""The leaderboards' figures summed from facts with DuckDB, as rows lib/leaderboard.lua merges.

One rule for every writer of the boards: the snapshot stage sums each file it registers, and a
rebuild sums the whole store, with the same queries.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from streamproc.analytics.store import Duck, source_sql

# Values per row, as lb_rebuild_merge.lua and lb_apply.lua take them.
ROW_WIDTH = 9
# Rows per script call: a chunk of customers takes the server about 6 ms, and other clients'
# commands run between two chunks.
CHUNK_ROWS = 1_000
# Rows (9 values each), the rules of lua/lib/leaderboard.lua: sums, the first order date, and the
# name on the latest order by "<order_date>|<order_id>". Sums and counts are per fact (a
# completion), so a file's rows added to the boards and the whole store's summed at once agree.
# Of equal keys the earliest fact's name is taken, and of one order's lines the last named one:
# the order in which the boards took names when each order was added on its own.
CUSTOMERS_SQL = """
SELECT 'c' AS kind, currency, customer_id::VARCHAR AS id, sum(total_cents)::BIGINT AS amount,
       '' AS revenue, count(*) AS orders,
       first(customer_name ORDER BY order_date || '|' || order_id DESC, seq) AS name,
       min(order_date) AS first, max(order_date || '|' || order_id) AS last
FROM {src} WHERE state = 'completed' GROUP BY currency, customer_id {order}
"""
PRODUCTS_SQL = """
WITH l AS (
  SELECT currency, seq, order_date || '|' || order_id AS k, unnest(lines) AS line,
         unnest(range(len(lines))) AS pos
  FROM {src} WHERE state = 'completed'
)
SELECT 'p' AS kind, currency, line.sku AS id, sum(line.quantity)::BIGINT AS amount,
       sum(line.amount_cents)::BIGINT AS revenue, count(DISTINCT seq) AS orders,
       coalesce(first(line.name ORDER BY k DESC, seq, pos DESC) FILTER (WHERE line.name <> ''),
                '') AS name,
       '' AS first, coalesce(max(k) FILTER (WHERE line.name <> ''), '') AS last
FROM l GROUP BY currency, line.sku {order}
"""

Rows = list[tuple[Any, ...]]


def sum_source(src: str, ordered: bool = False) -> tuple[Rows, Rows]:
    """Customer and product rows of the completions in `src`, a FROM clause of facts; `ordered`:
    by currency and id, the same rows in the same order every time (blocking)."""
    cur = Duck.cursor()
    order = "ORDER BY currency, id" if ordered else ""
    customers = cur.execute(CUSTOMERS_SQL.format(src=src, order=order)).fetchall()
    products = cur.execute(PRODUCTS_SQL.format(src=src, order=order)).fetchall()
    return customers, products


def file_chunks(
    path: str, counted: Iterable[int], rows_per_chunk: int = CHUNK_ROWS
) -> list[list[Any]]:
    """The rows of one store file's completions but those whose seq is in `counted` (already on
    the boards), as argument lists of `rows_per_chunk` rows; the same lists for the same file
    and `counted`, whoever sums it (blocking)."""
    src = source_sql([path])
    listed = ", ".join(str(seq) for seq in sorted(counted))
    if listed:
        src = f"(SELECT * FROM {src} WHERE seq NOT IN ({listed}))"  # noqa: S608 (integers)
    customers, products = sum_source(src, ordered=True)
    rows = [*customers, *products]
    return [
        [value for row in rows[i : i + rows_per_chunk] for value in row]
        for i in range(0, len(rows), rows_per_chunk)
    ]


class Pending(msgspec.Struct):
    """A registered file whose rows are being added to the boards a chunk at a time
    (keys.leaderboard_pending, lb_apply.lua): chunks added, chunks, rows per chunk, when the last
    one was (ms), and the seqs of its facts an earlier version had counted."""

    applied: int
    chunks: int
    rows_per_chunk: int
    at_ms: int
    counted: list[int]

    def encode(self) -> str:
        """The record as the scripts keep it: `<applied>|<chunks>|<rows>|<ms>|<seq,seq,…>`."""
        seqs = ",".join(str(seq) for seq in self.counted)
        return f"{self.applied}|{self.chunks}|{self.rows_per_chunk}|{self.at_ms}|{seqs}"


def parse_pending(raw: str) -> Pending | None:
    """A pending record, or None when it is not one."""
    parts = raw.split("|")
    if len(parts) != 5 or not all(p.isdigit() for p in parts[:4]):
        return None
    seqs = [int(s) for s in parts[4].split(",") if s.isdigit()]
    return Pending(int(parts[0]), int(parts[1]), int(parts[2]), int(parts[3]), seqs)
