"""SPEC §3.2 invariants checked on a drained run, through the CLI's JSON outputs, for fault tests.

Shared by several fault-test modules: add functions here, do not change the existing ones.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
import redis

from streamproc.gateway import simulated_outcome
from tests.notify_support import assert_indexes_agree
from tests.support import (
    KEYS,
    LOW_STOCK_FAILURES,
    TERMINAL,
    cli,
    export,
    notification_lines,
    status_json,
    stock_show,
)

# The only paths through the workflow for a first attempt: the payment stage settles an order
# once the gateway has answered (tests/earlier_version.py has the paths before it did).
STATE_PATHS: dict[str, list[str]] = {
    "completed": ["pending", "reserved", "completed"],
    "rolled_back": ["pending", "reserved", "rolled_back"],
    "failed": ["pending", "failed"],
}


def write_products(path: Path, catalogue: dict[str, int]) -> Path:
    """A products CSV (sku,name,price,stock) for `stock load`."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sku", "name", "price", "stock"])
        writer.writerows([sku, sku, "1.00", qty] for sku, qty in catalogue.items())
    return path


def order_ids_in(path: Path) -> list[str]:
    """The distinct order ids of an orders CSV, in file order."""
    with path.open(newline="") as handle:
        return list(dict.fromkeys(row["order_id"] for row in csv.DictReader(handle)))


def split_orders_csv(path: Path, parts: int) -> list[Path]:
    """Split an orders CSV into `parts` files of whole orders (an order's lines stay together)."""
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        orders: dict[str, list[list[str]]] = {}
        for row in reader:
            orders.setdefault(row[0], []).append(row)
    ids = list(orders)
    size = -(-len(ids) // parts)
    out: list[Path] = []
    for index in range(parts):
        chunk = ids[index * size : (index + 1) * size]
        if not chunk:
            break
        target = path.with_name(f"{path.stem}.part{index:03d}.csv")
        with target.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            for order_id in chunk:
                writer.writerows(orders[order_id])
        out.append(target)
    return out


def state_path(order: dict[str, Any]) -> list[str]:
    """The states of an exported order's history, oldest first (times dropped)."""
    return [step.partition("@")[0] for step in order["history"].split(";") if step]


def assert_pipeline_invariants(
    env: dict[str, str],
    expected_ids: set[str],
    catalogue: dict[str, int],
    *,
    seed: int,
    success_rate: float,
    failure_reasons: frozenset[str] | set[str] = frozenset(LOW_STOCK_FAILURES),
    paths: dict[str, list[str]] | None = None,
) -> dict[str, dict[str, Any]]:
    """INV-T, INV-P, INV-S, INV-E and one notification line per (order, type), after a drain.

    For runs where nothing may be dead-lettered (faults are crashes and outages, not bad data).
    Returns the exported orders by id.
    """
    orders = export(env)
    status = status_json(env)

    # INV-T: the input set is the terminal set, each order took exactly one path, once.
    assert set(orders) == expected_ids, (
        f"lost: {sorted(expected_ids - set(orders))[:20]}, "
        f"unexpected: {sorted(set(orders) - expected_ids)[:20]}"
    )
    states = Counter(order["state"] for order in orders.values())
    assert set(states) <= set(TERMINAL), states
    assert states["dead_lettered"] == 0, states
    assert status["dead_letters"] == 0, status["dead_letters"]
    counted = {state: n for state, n in status["orders"].items() if state != "total" and n}
    assert counted == dict(states), (counted, dict(states))
    assert status["orders"]["total"] == len(expected_ids)
    for order_id, order in orders.items():
        assert state_path(order) == (paths or STATE_PATHS)[order["state"]], (
            order_id,
            order["history"],
        )
        assert order["attempts"] == 1, order

    # INV-P: the charges the gateway's ledger holds, and the seeded gateway decided every payment.
    for order_id, order in orders.items():
        assert order["charges"] == (1 if order["state"] == "completed" else 0), order
        if order["state"] in ("completed", "rolled_back"):
            approved = simulated_outcome(seed, f"pay:{order_id}", success_rate)
            assert approved == (order["state"] == "completed"), order_id
        if order["state"] == "failed":
            assert order["payment"] in failure_reasons, order

    # INV-S per SKU: nothing reserved is left over, and committed = sold by completed orders.
    sold: Counter[str] = Counter()
    for order in orders.values():
        if order["state"] == "completed":
            for line in order["lines"]:
                sold[line["sku"]] += line["quantity"]
    stock = stock_show(env)
    assert set(stock) == set(catalogue), set(stock) ^ set(catalogue)
    for sku, row in stock.items():
        assert row["initial"] == catalogue[sku], row
        assert row["initial"] == row["available"] + row["reserved"] + row["committed"], row
        assert (row["reserved"], row["committed"]) == (0, sold[sku]), row
        assert row["available"] >= 0, row

    # INV-E: no group has anything pending or unread.
    for stage, info in status["stages"].items():
        assert (info["pending"], info["lag"]) == (0, 0), (stage, info)

    assert_one_notification_line_per_order_and_type(env, orders)
    # Crashes left every notification record in exactly one index (set or sent stream), its
    # customer's set and, while pending, the schedule; the days hash counts the streams.
    with redis.Redis.from_url(env["STREAMPROC_REDIS_URL"], decode_responses=True) as client:
        assert_indexes_agree(client)
    return orders


def assert_one_notification_line_per_order_and_type(
    env: dict[str, str], orders: dict[str, dict[str, Any]]
) -> None:
    """Exactly one log line per (order, type), matching the order's terminal state."""
    lines = notification_lines(env)
    per_key = Counter((line["order_reference"], line["type"]) for line in lines)
    repeated = {key: n for key, n in per_key.items() if n != 1}
    assert not repeated, f"{len(repeated)} notifications written more than once: {repeated}"
    expected = {
        (order_id, "success" if order["state"] == "completed" else "failed")
        for order_id, order in orders.items()
    }
    missing = expected - set(per_key)
    assert not missing, f"{len(missing)} orders were never notified: {sorted(missing)[:20]}"
    assert set(per_key) == expected, f"stray notifications: {sorted(set(per_key) - expected)[:20]}"
    for line in lines:
        assert line["order_status"] == orders[line["order_reference"]]["state"], line


def dead_letters(env: dict[str, str], stage: str | None = None) -> list[dict[str, Any]]:
    """`dlq list --json [--stage STAGE]`: every dead letter, oldest first."""
    args = ["dlq", "list", "--json"] + (["--stage", stage] if stage else [])
    return json.loads(cli(args, env).stdout)


def assert_one_notification_line_per_record(
    env: dict[str, str], orders: dict[str, dict[str, Any]], channels: tuple[str, ...] = ("log",)
) -> None:
    """INV-N by record id: one line per (order, type, channel), and one line per order."""
    lines = notification_lines(env)
    per_id = Counter(line["id"] for line in lines)
    repeated = {record_id: n for record_id, n in per_id.items() if n != 1}
    assert not repeated, f"notification records written more than once: {repeated}"
    expected = {
        f"{order_id}:{'success' if order['state'] == 'completed' else 'failed'}:{channel}"
        for order_id, order in orders.items()
        for channel in channels
    }
    assert set(per_id) == expected, (
        f"missing: {sorted(expected - set(per_id))[:20]}, "
        f"stray: {sorted(set(per_id) - expected)[:20]}"
    )
    per_order = Counter(line["order_reference"] for line in lines)
    assert set(per_order.values()) <= {len(channels)}, per_order


def assert_store_holds_each_once(
    r: redis.Redis, env: dict[str, str], states: dict[str, str]
) -> None:
    """The registered snapshot files hold one fact per terminal order, in its final state."""
    names = r.hkeys(KEYS.snapshot_files)
    assert names, "no snapshot file registered"
    root = Path(env["STREAMPROC_HOME"]) / "analytics" / KEYS.namespace
    files = [str(root / name) for name in names]
    rows = (
        duckdb.connect().execute("SELECT order_id, state FROM read_parquet(?)", [files]).fetchall()
    )
    ids = [order_id for order_id, _ in rows]
    assert len(ids) == len(set(ids)), "a fact was stored twice"
    assert dict(rows) == states
