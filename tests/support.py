"""Helpers shared by the multi-process tests: consumer fleets, CLI JSON readers, generated files.

The tests drive `python -m streamproc` subprocesses against the session's own server and read the
results through the CLI's JSON outputs (export, stock show, status), as an operator would.
"""

from __future__ import annotations

import csv
import json
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis

from benchmarks.generate import HEADER
from streamproc.keys import BOARDS, Keys
from tests.helpers import run_cli, spawn_cli, stop_procs

__all__ = ["HEADER"]

KEYS = Keys()
LOW_STOCK_FAILURES = {f"out_of_stock:SKU-G0{i}" for i in range(3)}
TERMINAL = ("completed", "failed", "rolled_back", "dead_lettered")


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
        wait_consumers_registered(self.env, stage, count, self.logs, timeout_s)

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


class Fleet(Pipeline):
    """Pipeline with named consumers, each with its own extra environment."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        super().__init__(env, log_dir)
        self.dead: list[subprocess.Popen[bytes]] = []

    def spawn(self, stage: str, consumer: str, **extra_env: str) -> subprocess.Popen[bytes]:
        """Start `consume --stage STAGE --consumer NAME` with extra environment variables."""
        proc = spawn_cli(
            ["consume", "--stage", stage, "--consumer", consumer],
            dict(self.env, **extra_env),
            log_path=self.log_dir / f"consume-{len(self.procs) + len(self.dead)}-{consumer}.log",
        )
        self.procs.append(proc)
        return proc

    def wait_killed(self, proc: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
        """The fault hook must fire: the process dies of SIGKILL (and leaves the running set)."""
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the fault never fired within {timeout_s} s\n{self.logs()}")
        assert code == -signal.SIGKILL, f"exit {code}, not SIGKILL\n{self.logs()}"
        self.procs.remove(proc)
        self.dead.append(proc)

    def drain(self, timeout_s: float) -> None:
        """wait_drained (every running consumer stops cleanly), then forget the stopped ones."""
        self.wait_drained(timeout_s)
        self.dead.extend(self.procs)
        self.procs.clear()


@contextmanager
def running_fleet(env: dict[str, str], log_dir: Path) -> Iterator[Fleet]:
    """A Fleet whose consumers are all stopped when the block ends (a fixture's teardown)."""
    fleet = Fleet(env, log_dir)
    try:
        yield fleet
    finally:
        stop_procs(fleet.procs)


def wait_consumers_registered(
    env: dict[str, str], stage: str, count: int, logs: Callable[[], str], timeout_s: float = 20
) -> None:
    """Wait until `count` consumers have read from the stage's group (they are all up)."""
    client = redis.Redis.from_url(env["STREAMPROC_REDIS_URL"])
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
    pytest.fail(f"{count} {stage} consumers never registered\n{logs()}")


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


def raw_boards(r: redis.Redis) -> dict[str, Any]:
    """Every live leaderboard key, as stored (scores, info hashes) and the currencies set."""
    out: dict[str, Any] = {"currencies": r.smembers(KEYS.leaderboard_currencies())}
    for currency in out["currencies"]:
        for board in BOARDS:
            key = KEYS.leaderboard(currency, board)
            if r.type(key) == "zset":
                out[key] = r.zrange(key, 0, -1, withscores=True)
            else:
                out[key] = r.hgetall(key)
    return out


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
