"""The whole pipeline as real processes: ingest, every stage consumer, `wait`, then the invariants.

Each test drives `python -m streamproc` subprocesses against the session's own server and checks
the results through the CLI's JSON outputs (export, stock show, status), as an operator would.
"""

from __future__ import annotations

import csv
import json
import re
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from streamproc.clock import iso_ms
from streamproc.keys import STAGES, record_bucket
from streamproc.orderview import parse_timeline
from tests.helpers import REPO_ROOT, stop_procs
from tests.invariants import assert_pipeline_invariants, order_ids_in, write_products
from tests.support import (
    KEYS,
    Pipeline,
    assert_one_notification_per_order,
    cli,
    export,
    generated_orders,
    one_line,
    status_json,
    stock_show,
    write_orders,
)


@pytest.fixture
def pipeline(sp_env: dict[str, str], tmp_path: Path) -> Iterator[Pipeline]:
    env = dict(sp_env, STREAMPROC_LOG_LEVEL="WARNING", STREAMPROC_PAYMENT_SUCCESS_RATE="1.0")
    running = Pipeline(env, tmp_path)
    try:
        yield running
    finally:
        stop_procs(running.procs)


def test_sample_csv_end_to_end(pipeline: Pipeline, r: redis.Redis) -> None:
    env = pipeline.env
    cli(["stock", "load", str(REPO_ROOT / "products.csv")], env)
    before = stock_show(env)
    ingested = json.loads(cli(["ingest", str(REPO_ROOT / "sample.csv"), "--json"], env).stdout)
    assert ingested["imported"] == 10
    pipeline.start("all")
    pipeline.wait_drained(40)

    orders = export(env)
    assert len(orders) == 10
    per_day: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for order in orders.values():
        assert order["state"] == "completed", order
        assert order["charges"] == 1, order
        assert order["history"].count("completed@") == 1
        day = per_day[order["order_date"][:10]]
        day[0] += 1
        day[1] += order["total_cents"]
    assert dict(per_day) == {"2025-11-10": [5, 48596], "2025-11-11": [5, 57947]}
    # The charges above come from the ledger: the gateway's slot holds its ledger and stats only
    # (no per-order charge counter). The ledger and the reservation records are kept in small
    # bucket hashes by the orders' creation ms, each a compact listpack.
    gateway_slot = KEYS.gateway_ledger.rsplit(":", 1)[0] + ":"
    ledger_buckets = {
        KEYS.gateway_bucket(record_bucket(int(r.hget(KEYS.order(oid), "c")), oid)) for oid in orders
    }
    assert {k for k in r.scan_iter() if k.startswith(gateway_slot)} == {
        KEYS.gateway_stats,
        *ledger_buckets,
    }
    assert sum(r.hlen(b) for b in ledger_buckets) == len(orders)
    reservation_buckets = {
        KEYS.reservation_bucket(record_bucket(int(r.hget(KEYS.order(oid), "c")), oid))
        for oid in orders
    }
    assert {k for k in r.scan_iter(match=KEYS.reservation_bucket("*"))} == reservation_buckets
    assert not r.exists(KEYS.reservations)
    for bucket in ledger_buckets | reservation_buckets:
        assert r.object("encoding", bucket) == "listpack", bucket
    path = ["pending", "reserved", "completed"]
    for order_id, order in orders.items():
        # Stored compactly (lib/order.lua): a state code and the ms after c per step, no u;
        # exported with states and ISO times.
        stored = r.hgetall(KEYS.order(order_id))
        assert "u" not in stored, stored
        steps = re.fullmatch(r"p(0)r(-?[0-9]+)c(-?[0-9]+)", stored["h"])
        assert steps, stored
        offsets = [int(at) for at in steps.groups()]
        assert offsets == sorted(offsets), stored
        # The timeline the `state@+ms` steps written before would give.
        created = int(stored["c"])
        old_form = ";".join(f"{state}@+{at}" for state, at in zip(path, offsets, strict=True))
        assert parse_timeline(stored["h"], created) == parse_timeline(old_form, created)
        last = iso_ms(created + offsets[-1])
        assert order["updated_at"] == last and order["history"].endswith(f"completed@{last}")

    sold: Counter[str] = Counter()
    for order in orders.values():
        for line in order["lines"]:
            sold[line["sku"]] += line["quantity"]
    assert sold["SKU-002"] == 8
    with (REPO_ROOT / "products.csv").open(newline="") as handle:
        catalogue = {row["sku"]: int(row["stock"]) for row in csv.DictReader(handle)}
    after = stock_show(env)
    assert set(after) == set(catalogue) == set(before)
    for sku, initial in catalogue.items():
        assert after[sku]["initial"] == initial
        assert after[sku]["available"] == initial - sold[sku], sku
        assert after[sku]["reserved"] == 0, sku
        assert after[sku]["committed"] == sold[sku], sku

    assert_one_notification_per_order(env, orders)


class AvailablePoller(threading.Thread):
    """Samples HGET available SKU in a loop and keeps the smallest value seen."""

    def __init__(self, url: str, sku: str) -> None:
        super().__init__(daemon=True)
        self.client = redis.Redis.from_url(url)
        self.sku = sku
        self.lowest: int | None = None
        self.samples = 0
        self.halt = threading.Event()

    def run(self) -> None:
        try:
            while not self.halt.is_set():
                raw = self.client.hget(KEYS.stock("available"), self.sku)
                if raw is not None:
                    value = int(raw)
                    self.lowest = value if self.lowest is None else min(self.lowest, value)
                    self.samples += 1
        finally:
            self.client.close()


def test_no_oversell_with_four_reserve_consumers(pipeline: Pipeline, tmp_path: Path) -> None:
    env = pipeline.env = dict(pipeline.env, STREAMPROC_BATCH_SIZE="1")
    cli(["stock", "set", "SKU-X", "10"], env)
    orders_csv = write_orders(
        tmp_path / "rush.csv", [one_line(f"rush-{i:03d}", "SKU-X", 1) for i in range(50)]
    )
    poller = AvailablePoller(env["STREAMPROC_REDIS_URL"], "SKU-X")
    poller.start()
    try:
        # Consumers first, reading one entry at a time, then orders one per server call: the four
        # reserve processes really compete for the same ten units.
        pipeline.start("reserve", 4)
        for stage in ("payment", "finalize", "rollback", "notify", "snapshot"):
            pipeline.start(stage)
        pipeline.wait_registered("reserve", 4)
        cli(["ingest", str(orders_csv), "--batch-size", "1"], env)
        pipeline.wait_drained(40)
    finally:
        poller.halt.set()
        poller.join(timeout=10)

    assert poller.samples > 0
    assert poller.lowest is not None and poller.lowest >= 0, poller.lowest
    orders = export(env)
    states = Counter(order["state"] for order in orders.values())
    assert states == {"completed": 10, "failed": 40}
    for order in orders.values():
        assert order["charges"] == (1 if order["state"] == "completed" else 0), order
        if order["state"] == "failed":
            assert order["payment"] == "out_of_stock:SKU-X"
    stock = stock_show(env)["SKU-X"]
    assert (stock["available"], stock["reserved"], stock["committed"]) == (0, 0, 10)
    assert stock["initial"] == 10
    assert_one_notification_per_order(env, orders)


def test_order_with_one_line_out_of_stock_takes_nothing(pipeline: Pipeline, tmp_path: Path) -> None:
    env = pipeline.env
    cli(["stock", "set", "SKU-A", "10"], env)
    cli(["stock", "set", "SKU-B", "1"], env)
    orders_csv = write_orders(
        tmp_path / "two.csv", [one_line("two-lines", "SKU-A", 3), one_line("two-lines", "SKU-B", 2)]
    )
    cli(["ingest", str(orders_csv)], env)
    pipeline.start("all")
    pipeline.wait_drained(30)

    order = export(env)["two-lines"]
    assert order["state"] == "failed"
    assert [line["sku"] for line in order["lines"]] == ["SKU-A", "SKU-B"]
    assert order["payment"] == "out_of_stock:SKU-B"
    assert order["charges"] == 0
    stock = stock_show(env)
    assert {
        sku: (row["available"], row["reserved"], row["committed"]) for sku, row in stock.items()
    } == {
        "SKU-A": (10, 0, 0),
        "SKU-B": (1, 0, 0),
    }


@pytest.mark.slow
def test_five_thousand_orders_two_consumers_per_stage(pipeline: Pipeline, tmp_path: Path) -> None:
    seed, total = 7, 5000
    env = pipeline.env = dict(
        pipeline.env,
        STREAMPROC_PAYMENT_SUCCESS_RATE="0.8",
        STREAMPROC_PAYMENT_SEED=str(seed),
        STREAMPROC_BATCH_SIZE="50",
    )
    orders_csv, catalogue = generated_orders(tmp_path / "orders.csv", total, seed=2025)
    products = write_products(tmp_path / "products.csv", catalogue)
    cli(["stock", "load", str(products)], env)

    # Consumers first (small batches, so the two of each stage share the work), then the import
    # streams in while they run.
    for stage in STAGES:
        pipeline.start(stage, 2)
    for stage in STAGES:
        pipeline.wait_registered(stage, 2)
    ingested = json.loads(cli(["ingest", str(orders_csv), "--json"], env).stdout)
    assert (ingested["imported"], ingested["rejected"], ingested["duplicates"]) == (total, 0, 0)
    pipeline.wait_drained(90)

    # INV-T, INV-P, INV-S, INV-E and one notification per (order, type): the shared audit.
    expected = set(order_ids_in(orders_csv))
    assert len(expected) == total
    orders = assert_pipeline_invariants(env, expected, catalogue, seed=seed, success_rate=0.8)
    states = Counter(order["state"] for order in orders.values())
    assert states["completed"] > 0 and states["failed"] > 0 and states["rolled_back"] > 0, states
    for order in orders.values():
        assert order["history"].count(order["state"] + "@") == 1, order
    sold_g00 = sum(
        line["quantity"]
        for order in orders.values()
        if order["state"] == "completed"
        for line in order["lines"]
        if line["sku"] == "SKU-G00"
    )
    assert status_json(env)["stock"]["SKU-G00"]["committed"] == sold_g00

    assert_one_notification_per_order(env, orders)
