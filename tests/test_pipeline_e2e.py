"""The whole pipeline as real processes: ingest, every stage consumer, `wait`, then the invariants.

Each test drives `python -m streamproc` subprocesses against the session's own server and checks
the results through the CLI's JSON outputs (export, stock show, status), as an operator would.
"""

from __future__ import annotations

import csv
import json
import random
import subprocess
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from streamproc.gateway import simulated_outcome
from streamproc.keys import Keys
from tests.helpers import REPO_ROOT, run_cli, spawn_cli, stop_procs

KEYS = Keys()
LOW_STOCK_FAILURES = {f"out_of_stock:SKU-G0{i}" for i in range(3)}
TERMINAL = ("completed", "failed", "rolled_back", "dead_lettered")
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


class Pipeline:
    """Consumer processes started by one test; all of them are stopped at teardown."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, stage: str, count: int = 1) -> None:
        """Start `count` `consume --stage STAGE` processes."""
        for _ in range(count):
            index = len(self.procs)
            self.procs.append(
                spawn_cli(
                    ["consume", "--stage", stage],
                    self.env,
                    log_path=self.log_dir / f"consume-{index}-{stage}.log",
                )
            )

    def wait_registered(self, stage: str, count: int, timeout_s: float = 20) -> None:
        """Wait until `count` consumers have read from the stage's group (they are all up)."""
        client = redis.Redis.from_url(self.env["STREAMPROC_REDIS_URL"])
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                try:
                    if len(client.xinfo_consumers(KEYS.stream(stage), stage)) >= count:
                        return
                except redis.ResponseError:
                    pass  # stream or group not created yet
                time.sleep(0.05)
        finally:
            client.close()
        pytest.fail(f"{count} {stage} consumers never registered\n{self.logs()}")

    def logs(self) -> str:
        """The tail of every consumer's output, for assertion messages."""
        parts = []
        for path in sorted(self.log_dir.glob("consume-*.log")):
            tail = path.read_text(errors="replace").splitlines()[-15:]
            parts.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(parts)

    def wait_drained(self, timeout_s: float) -> None:
        """`streamproc wait`, then a clean SIGTERM stop of every consumer (exit 0 each)."""
        done = cli(
            ["wait", "--timeout", str(timeout_s)], self.env, check=False, timeout=timeout_s + 30
        )
        if done.returncode != 0:
            status = cli(["status"], self.env, check=False).stdout
            pytest.fail(f"not drained: {done.stderr}\n{status}\n{self.logs()}")
        for proc in self.procs:
            assert proc.poll() is None, f"a consumer died during the run:\n{self.logs()}"
        codes = stop_procs(self.procs)
        assert codes == [0] * len(codes), f"consumer exit codes {codes}\n{self.logs()}"


@pytest.fixture
def pipeline(sp_env: dict[str, str], tmp_path: Path) -> Iterator[Pipeline]:
    env = dict(sp_env, STREAMPROC_LOG_LEVEL="WARNING", STREAMPROC_PAYMENT_SUCCESS_RATE="1.0")
    running = Pipeline(env, tmp_path)
    try:
        yield running
    finally:
        stop_procs(running.procs)


def cli(
    args: list[str], env: dict[str, str], check: bool = True, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """run_cli, asserting exit 0 unless check is False."""
    done = run_cli(args, env, timeout=timeout)
    if check:
        assert done.returncode == 0, f"{args}: exit {done.returncode}\n{done.stderr}"
    return done


def export(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    """`orders export --format jsonl` by order id."""
    out = cli(["orders", "export", "--format", "jsonl"], env).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    by_id = {row["order_id"]: row for row in rows}
    assert len(by_id) == len(rows), "an order was exported twice"
    return by_id


def stock_show(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    """`stock show --json` by SKU."""
    rows = json.loads(cli(["stock", "show", "--json"], env).stdout)
    return {row["sku"]: row for row in rows}


def status_json(env: dict[str, str]) -> dict[str, Any]:
    """`status --json`."""
    return json.loads(cli(["status", "--json"], env).stdout)


def notification_lines(env: dict[str, str]) -> list[dict[str, Any]]:
    """Every JSON line of the notifications log."""
    path = Path(env["STREAMPROC_HOME"]) / "notifications.log"
    if "STREAMPROC_NOTIFICATIONS_LOG" in env:
        path = Path(env["STREAMPROC_NOTIFICATIONS_LOG"])
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_orders(path: Path, rows: list[list[object]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        writer.writerows(rows)
    return path


def one_line(order_id: str, sku: str, quantity: int, price: str = "10.00") -> list[object]:
    return [order_id, 1, "Test Customer", sku, "Thing", quantity, price, "USD", "2025-11-10"]


def assert_one_notification_per_order(env: dict[str, str], orders: dict[str, Any]) -> None:
    lines = notification_lines(env)
    per_order = Counter(line["order_reference"] for line in lines)
    assert set(per_order) == set(orders), "an order has no notification (or a stranger has one)"
    repeated = {order_id: n for order_id, n in per_order.items() if n != 1}
    assert not repeated, f"orders notified more than once: {repeated}"
    for line in lines:
        order = orders[line["order_reference"]]
        assert line["order_status"] == order["state"]
        assert line["type"] == ("success" if order["state"] == "completed" else "failed")


def test_sample_csv_end_to_end(pipeline: Pipeline) -> None:
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
        for stage in ("payment", "finalize", "rollback", "notify"):
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


def generated_orders(path: Path, count: int, seed: int) -> tuple[Path, dict[str, int]]:
    """A seeded CSV of `count` orders (a quarter of them multi-line) and its SKU catalogue.

    Three SKUs have little stock, so orders race for them and some fail.
    """
    rng = random.Random(seed)
    catalogue = {f"SKU-G{i:02d}": (60 if i < 3 else 100_000) for i in range(16)}
    skus = list(catalogue)
    rows: list[list[object]] = []
    for n in range(count):
        customer = rng.randint(1, 900)
        day = (
            f"2025-11-{rng.randint(1, 28):02d} {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00"
        )
        line_count = rng.choice((1, 1, 1, 2, 3))
        for sku in rng.sample(skus, line_count):
            price = f"{rng.randint(100, 99_999) / 100:.2f}"
            rows.append(
                [
                    f"G{n:05d}",
                    customer,
                    f"Customer {customer}",
                    sku,
                    "Item",
                    rng.randint(1, 4),
                    price,
                    "USD",
                    day,
                ]
            )
    write_orders(path, rows)
    return path, catalogue


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
    products = tmp_path / "products.csv"
    with products.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sku", "name", "price", "stock"])
        writer.writerows([sku, sku, "1.00", qty] for sku, qty in catalogue.items())
    cli(["stock", "load", str(products)], env)

    # Consumers first (small batches, so the two of each stage share the work), then the import
    # streams in while they run.
    for stage in ("reserve", "payment", "finalize", "rollback", "notify"):
        pipeline.start(stage, 2)
    for stage in ("reserve", "payment", "finalize", "rollback", "notify"):
        pipeline.wait_registered(stage, 2)
    ingested = json.loads(cli(["ingest", str(orders_csv), "--json"], env).stdout)
    assert (ingested["imported"], ingested["rejected"], ingested["duplicates"]) == (total, 0, 0)
    pipeline.wait_drained(90)

    orders = export(env)
    status = status_json(env)
    # INV-T: every imported order is in exactly one terminal state, counted the same everywhere.
    assert len(orders) == total
    states = Counter(order["state"] for order in orders.values())
    assert set(states) <= set(TERMINAL), states
    counted = {state: n for state, n in status["orders"].items() if state != "total" and n}
    assert counted == dict(states)
    assert status["orders"]["total"] == total
    assert states["completed"] > 0 and states["failed"] > 0 and states["rolled_back"] > 0, states
    assert states["dead_lettered"] == 0
    assert status["dead_letters"] == 0
    for order in orders.values():
        assert order["history"].startswith("pending@")
        assert order["history"].count(order["state"] + "@") == 1, order

    # INV-P: from the gateway's own charge counter; and the seeded gateway decided every payment.
    for order_id, order in orders.items():
        expected = 1 if order["state"] == "completed" else 0
        assert order["charges"] == expected, order
        if order["state"] in ("completed", "rolled_back"):
            approved = simulated_outcome(seed, f"pay:{order_id}", 0.8)
            assert approved == (order["state"] == "completed"), order_id
        if order["state"] == "failed":
            assert order["payment"] in LOW_STOCK_FAILURES, order

    # INV-S per SKU.
    sold: Counter[str] = Counter()
    for order in orders.values():
        if order["state"] == "completed":
            for line in order["lines"]:
                sold[line["sku"]] += line["quantity"]
    stock = stock_show(env)
    assert set(stock) == set(catalogue)
    for sku, row in stock.items():
        assert row["initial"] == catalogue[sku]
        assert row["initial"] == row["available"] + row["reserved"] + row["committed"], row
        assert row["reserved"] == 0, row
        assert row["available"] >= 0, row
        assert row["committed"] == sold[sku], row
    assert status["stock"]["SKU-G00"]["committed"] == sold["SKU-G00"]

    # INV-E: no group has anything pending or unread.
    for stage, info in status["stages"].items():
        assert (info["pending"], info["lag"]) == (0, 0), (stage, info)

    assert_one_notification_per_order(env, orders)
