"""Seeded generator of order CSVs for benchmarks and large tests.

    python -m benchmarks.generate --orders 200000 --out benchmarks/data/orders.csv [--seed 7]

Orders have 1-3 lines (about 20% multi-line), customers and SKUs drawn from fixed pools, and
order dates spread over 2025. Same seed, same file.
"""

from __future__ import annotations

import argparse
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
    start = datetime(2025, 1, 1, tzinfo=UTC)
    writer = csv.writer(out)
    writer.writerow(HEADER)
    rows = 0
    for n in range(orders):
        customer = rng.randint(1, customers)
        name = f"{FIRST[customer % 10]} {LAST[(customer // 10) % 10]}"
        when = (start + timedelta(seconds=rng.randrange(365 * 86_400))).strftime(
            "%Y-%m-%d %H:%M:%S"
        )
        lines = rng.randint(2, 3) if rng.random() < multi_line_ratio else 1
        for _ in range(lines):
            sku = rng.randrange(skus)
            cents = prices[sku]
            writer.writerow(
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
            rows += 1
    return rows


def main() -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, required=True)
    parser.add_argument("--out", type=Path, help="file to write (default: stdout)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--skus", type=int, default=1000)
    args = parser.parse_args()
    if args.out is None:
        rows = write_orders(sys.stdout, args.orders, args.seed, args.skus)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("w", newline="", encoding="utf-8") as handle:
            rows = write_orders(handle, args.orders, args.seed, args.skus)
    print(f"{args.orders} orders, {rows} rows", file=sys.stderr)


if __name__ == "__main__":
    main()
