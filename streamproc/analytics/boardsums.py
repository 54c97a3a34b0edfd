"""The leaderboards' figures summed from facts with DuckDB, as rows lib/leaderboard.lua merges.

One rule for every writer of the boards: the snapshot stage sums each file it registers, and a
rebuild sums the whole store, with the same queries.
"""

from __future__ import annotations

from typing import Any

from streamproc.analytics.store import Duck, source_sql

# Values per row, as lb_rebuild_merge.lua and snapshot_register.lua take them.
ROW_WIDTH = 9
# Rows (9 values each), the rules of lua/lib/leaderboard.lua: sums, the first order date, and the
# name on the latest order by "<order_date>|<order_id>". Sums and counts are per fact (a
# completion), so a file's rows added to the boards and the whole store's summed at once agree.
# Of equal keys the earliest fact's name is taken, and of one order's lines the last named one:
# the order in which the boards took names when each order was added on its own.
CUSTOMERS_SQL = """
SELECT 'c', currency, customer_id::VARCHAR, sum(total_cents)::BIGINT, '', count(*),
       first(customer_name ORDER BY order_date || '|' || order_id DESC, seq), min(order_date),
       max(order_date || '|' || order_id)
FROM {src} WHERE state = 'completed' GROUP BY currency, customer_id
"""
PRODUCTS_SQL = """
WITH l AS (
  SELECT currency, seq, order_date || '|' || order_id AS k, unnest(lines) AS line,
         unnest(range(len(lines))) AS pos
  FROM {src} WHERE state = 'completed'
)
SELECT 'p', currency, line.sku, sum(line.quantity)::BIGINT, sum(line.amount_cents)::BIGINT,
       count(DISTINCT seq),
       coalesce(first(line.name ORDER BY k DESC, seq, pos DESC) FILTER (WHERE line.name <> ''),
                ''), '',
       coalesce(max(k) FILTER (WHERE line.name <> ''), '')
FROM l GROUP BY currency, line.sku
"""

Rows = list[tuple[Any, ...]]


def sum_source(src: str) -> tuple[Rows, Rows]:
    """Customer and product rows of the completions in `src`, a FROM clause of facts
    (blocking)."""
    cur = Duck.cursor()
    customers = cur.execute(CUSTOMERS_SQL.format(src=src)).fetchall()
    products = cur.execute(PRODUCTS_SQL.format(src=src)).fetchall()
    return customers, products


def file_rows(path: str, counted: set[int]) -> list[Any]:
    """The rows of one store file's completions, but those whose seq is in `counted` (already on
    the boards), flattened into one argument list (blocking)."""
    src = source_sql([path])
    if counted:
        listed = ", ".join(str(seq) for seq in sorted(counted))
        src = f"(SELECT * FROM {src} WHERE seq NOT IN ({listed}))"  # noqa: S608 (integers)
    customers, products = sum_source(src)
    return [value for row in (*customers, *products) for value in row]
