"""Seeded generator of order CSVs for benchmarks and large tests.

    python -m benchmarks.generate --orders 200000 --out benchmarks/data/orders.csv [--seed 7]
    python -m benchmarks.generate --rows 1000000 --out /tmp/1m-rows.csv [--multi-line-ratio 0.2]

Orders have 1-3 lines (about 20% multi-line), customers and SKUs drawn from fixed pools, and
order dates spread over 2025. Same seed, same file. `--rows` writes exactly that many data rows
(the last order is cut short if needed); its orders are the same as `--orders`' up to that point.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import random
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TextIO

HEADER = [
    "order_id",
    "customer_id",
    "customer_name",
    "product_sku",
    "product_name",
    "quantity",
    "unit_price",
    "currency",
    "order_date",
]
FIRST = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jo"]
LAST = ["Smith", "Okafor", "Lee", "Garcia", "Novak", "Silva", "Kim", "Brown", "Ito", "Khan"]
START = datetime(2025, 1, 1, tzinfo=UTC)


def _order_rows(
    rng: random.Random,
    n: int,
    seed: int,
    prices: list[int],
    customers: int,
    multi_line_ratio: float,
) -> list[list[object]]:
    """The rows of the n-th order; draws from `rng` in a fixed order (same seed, same file)."""
    customer = rng.randint(1, customers)
    name = f"{FIRST[customer % 10]} {LAST[(customer // 10) % 10]}"
    when = (START + timedelta(seconds=rng.randrange(365 * 86_400))).strftime("%Y-%m-%d %H:%M:%S")
    lines = rng.randint(2, 3) if rng.random() < multi_line_ratio else 1
    rows: list[list[object]] = []
    for _ in range(lines):
        sku = rng.randrange(len(prices))
        cents = prices[sku]
        rows.append(
            [
                f"ORD-{seed}-{n}",
                customer,
                name,
                f"SKU-{sku:05d}",
                f"Product {sku}",
                rng.randint(1, 3),
                f"{cents // 100}.{cents % 100:02d}",
                "USD",
                when,
            ]
        )
    return rows


def write_orders(
    out: TextIO,
    orders: int,
    seed: int = 7,
    skus: int = 1000,
    customers: int = 50_000,
    multi_line_ratio: float = 0.2,
) -> int:
    """Write `orders` orders; returns the number of rows."""
    rng = random.Random(seed)
    prices = [rng.randint(100, 50_000) for _ in range(skus)]
    writer = csv.writer(out)
    writer.writerow(HEADER)
    rows = 0
    for n in range(orders):
        lines = _order_rows(rng, n, seed, prices, customers, multi_line_ratio)
        writer.writerows(lines)
        rows += len(lines)
    return rows


def write_rows(
    out: TextIO,
    rows: int,
    seed: int = 7,
    skus: int = 1000,
    customers: int = 50_000,
    multi_line_ratio: float = 0.2,
) -> int:
    """Write exactly `rows` data rows (the last order may lose lines); returns the orders."""
    rng = random.Random(seed)
    prices = [rng.randint(100, 50_000) for _ in range(skus)]
    writer = csv.writer(out)
    writer.writerow(HEADER)
    written = orders = 0
    while written < rows:
        lines = _order_rows(rng, orders, seed, prices, customers, multi_line_ratio)
        lines = lines[: rows - written]
        writer.writerows(lines)
        written += len(lines)
        orders += 1
    return orders


def main() -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument("--orders", type=int, help="number of orders to write")
    size.add_argument("--rows", type=int, help="number of data rows to write (exactly)")
    parser.add_argument("--out", type=Path, help="file to write (default: stdout)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--skus", type=int, default=1000)
    parser.add_argument("--multi-line-ratio", type=float, default=0.2)
    args = parser.parse_args()
    options = {"seed": args.seed, "skus": args.skus, "multi_line_ratio": args.multi_line_ratio}
    with contextlib.ExitStack() as stack:
        out: TextIO = sys.stdout
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            out = stack.enter_context(args.out.open("w", newline="", encoding="utf-8"))
        if args.rows is None:
            orders, rows = args.orders, write_orders(out, args.orders, **options)
        else:
            orders, rows = write_rows(out, args.rows, **options), args.rows
    print(f"{orders} orders, {rows} rows", file=sys.stderr)


if __name__ == "__main__":
    main()
