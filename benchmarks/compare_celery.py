"""streamproc against Celery 5 on the same workflow, the same file and the same server.

    pip install -e '.[bench]'        # Celery is a benchmark-only dependency
    python -m benchmarks.compare_celery [--orders 20000] [--quick] [--procs 2] [--stock N]

One private server (benchmarks/common.py, AOF everysec) and one seeded CSV; then, one after the
other, with the server flushed between them:

- streamproc: `streamproc stock load`, PROCS `streamproc consume --stage all` processes (as
  benchmarks/pipeline.py runs them), then `streamproc ingest FILE` (database 0);
- Celery: benchmarks/celery_workflow.py, one `celery worker -c PROCS --pool prefork` (broker in
  database 1, data in database 2), then `python -m benchmarks.celery_workflow enqueue FILE`.

Both use the same payment rule (streamproc.gateway.simulated_outcome, payment seed 0, success rate
0.9), the same catalogue (SKU-00000… with --stock units each) and one log notification per order.
Each run is timed from spawning the ingest/enqueue process (the first enqueue) to the last order
reaching its terminal state (`orders_per_s`) and to the last notification line (`…_notified`);
the server's CPU over the same span is `server_cpu_us_per_order` (far steadier than a 2-second
run's wall time, for telling two versions apart).
Afterwards both are audited: every order in exactly one terminal state and the state counters
agree; per SKU initial = available + reserved + committed, nothing left reserved, committed = sold;
completed ⇒ exactly one charge, otherwise none, and the outcome is the seeded one; one log line per
order. Results go to benchmarks/results/compare_celery.json; exit 1 when an invariant fails, 2 when
Celery is not installed.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import redis

from benchmarks.common import machine, private_server, save, server_cpu_seconds
from benchmarks.generate import write_orders
from streamproc.gateway import (
    idempotency_key,
    order_results,
    simulated_outcome,
    successful_charges,
)
from streamproc.keys import Keys
from streamproc.orderview import order_timeline
from streamproc.stock import show_stock

REPO = Path(__file__).resolve().parent.parent
INSTALL_HINT = "Celery is not installed: pip install -e '.[bench]'"
TERMINAL = frozenset({"completed", "failed", "rolled_back", "dead_lettered"})
QUICK_ORDERS = 200
Lines = dict[str, dict[str, int]]  # order id → quantity per SKU


@dataclass(frozen=True, slots=True)
class Setup:
    """What both runs share."""

    work: Path
    csv_path: Path
    orders: Lines
    skus: list[str]
    stock: int
    procs: int
    payment_seed: int
    success_rate: float
    timeout_s: float
    prefetch: int


@dataclass(slots=True)
class Outcome:
    """What a system left behind, read back from Redis and its notifications log."""

    states: dict[str, str]
    counts: dict[str, int]
    charges: dict[str, int]
    stock: dict[str, tuple[int, int, int, int]]  # sku → initial, available, reserved, committed
    notifications: list[dict[str, Any]]
    last_terminal_ms: int


@dataclass(slots=True)
class Timing:
    """Seconds from the first enqueue (wall clock, shared with the workers' timestamps)."""

    started: float
    enqueued: float = 0.0
    notified: float = 0.0
    server_cpu_s: float = 0.0  # the server's CPU from the spawn to the last notification
    enqueue_report: dict[str, Any] = field(default_factory=dict)


def celery_available() -> bool:
    """Whether the bench extra is installed."""
    return importlib.util.find_spec("celery") is not None


# -- shared setup -------------------------------------------------------------------------------
def read_orders(path: Path) -> Lines:
    """Quantity per SKU of each order (consecutive rows with the same id), from the CSV."""
    orders: Lines = {}
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            lines = orders.setdefault(row["order_id"], {})
            lines[row["product_sku"]] = lines.get(row["product_sku"], 0) + int(row["quantity"])
    return orders


def write_catalogue(path: Path, skus: list[str], stock: int) -> Path:
    """products.csv for `streamproc stock load`."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sku", "name", "price", "stock"])
        writer.writerows([sku, sku, "1.00", stock] for sku in skus)
    return path


def base_env() -> dict[str, str]:
    """The environment without any STREAMPROC_/CW_ setting of the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMPROC_", "CW_"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def with_db(url: str, db: int) -> str:
    """The same server, another database number."""
    return url.rsplit("/", 1)[0] + f"/{db}"


def reset_server(url: str) -> None:
    """Empty every database and compact the AOF, so the next run starts like the first."""
    client = redis.Redis.from_url(url)
    client.flushall()
    client.bgrewriteaof()
    for _ in range(600):
        info = client.info("persistence")
        if not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]:
            return
        time.sleep(0.05)


# -- processes ----------------------------------------------------------------------------------
def spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """A child in its own process group (so its pool children stop with it), output to `log`.

    Not in a session of its own: under the scheduler's autogroups each session is a CPU group,
    and a consumer (or worker) in one of its own would weigh as much as the server, which has
    one (benchmarks/common.py). Both systems' processes share the benchmark's group instead.
    """
    with log.open("ab") as out:
        return subprocess.Popen(
            argv, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, process_group=0
        )


def stop(procs: list[subprocess.Popen[bytes]], grace_s: float = 30) -> None:
    """SIGTERM our children, then SIGKILL the process group of any that does not exit."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def quiet_run(env: dict[str, str], log: Path) -> Callable[[list[str]], None]:
    """A runner of one-shot commands whose output goes to `log`; raises when one fails."""

    def run(argv: list[str]) -> None:
        with log.open("ab") as out:
            subprocess.run(argv, env=env, cwd=REPO, stdout=out, stderr=out, check=True)

    return run


def tail(path: Path, lines: int = 20) -> str:
    """The end of a child's log, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class LineCounter:
    """Counts the lines of a growing file, reading only what was appended since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.lines = 0

    def count(self) -> int:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                chunk = handle.read()
        except FileNotFoundError:
            return 0
        self.offset += len(chunk)
        self.lines += chunk.count(b"\n")
        return self.lines


def run_until_notified(
    setup: Setup,
    enqueue_argv: list[str],
    env: dict[str, str],
    log: Path,
    workers: list[subprocess.Popen[bytes]],
    server: redis.Redis,
) -> Timing:
    """Spawn the enqueuer and wait for one notification line per order (timed)."""
    counter = LineCounter(log)
    out = setup.work / "enqueue.out"
    cpu_before = server_cpu_seconds(server)
    timing = Timing(started=time.time())
    with out.open("wb") as handle, (setup.work / "enqueue.err").open("ab") as err:
        enqueuer = subprocess.Popen(enqueue_argv, env=env, cwd=REPO, stdout=handle, stderr=err)
    deadline = time.monotonic() + setup.timeout_s
    while counter.count() < len(setup.orders):
        if not timing.enqueued and enqueuer.poll() is not None:
            timing.enqueued = time.time() - timing.started
            if enqueuer.returncode not in (0, 1):
                err = tail(setup.work / "enqueue.err")
                raise RuntimeError(f"{enqueue_argv[2:4]} exited {enqueuer.returncode}: {err}")
        if any(w.poll() is not None for w in workers):
            raise RuntimeError("a worker died during the run")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{counter.lines}/{len(setup.orders)} notified")
        time.sleep(0.02)
    timing.notified = time.time() - timing.started
    timing.server_cpu_s = server_cpu_seconds(server) - cpu_before
    enqueuer.wait(60)
    timing.enqueued = timing.enqueued or timing.notified
    timing.enqueue_report = json.loads(out.read_text() or "{}")
    return timing


def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `check` every 50 ms."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


# -- streamproc ---------------------------------------------------------------------------------
def streamproc_env(setup: Setup, url: str) -> dict[str, str]:
    """Our server, a private home and notifications log, the shared payment rule."""
    env = base_env()
    env.update(
        STREAMPROC_REDIS_URL=url,
        STREAMPROC_HOME=str(setup.work / "sp-home"),
        STREAMPROC_NOTIFICATIONS_LOG=str(setup.work / "sp-notifications.log"),
        STREAMPROC_PAYMENT_SEED=str(setup.payment_seed),
        STREAMPROC_PAYMENT_SUCCESS_RATE=str(setup.success_rate),
        STREAMPROC_PAYMENT_LATENCY_MS="0",
        STREAMPROC_LOG_LEVEL="WARNING",
    )
    return env


def consumers_registered(client: redis.Redis, count: int) -> bool:
    """Whether `count` consumers read from the reserve group (they are all up)."""
    try:
        groups = client.xinfo_groups(Keys().stream("reserve"))
    except redis.ResponseError:
        return False
    return any(int(g["consumers"]) >= count for g in groups)


def run_streamproc(setup: Setup, url: str) -> tuple[Timing, Outcome]:
    """stock load, PROCS `consume --stage all`, timed ingest; then drained and read back."""
    env = streamproc_env(setup, url)
    cli = [sys.executable, "-m", "streamproc"]
    catalogue = write_catalogue(setup.work / "products.csv", setup.skus, setup.stock)
    log = setup.work / "sp-consumers.log"
    quiet = quiet_run(env, log)
    quiet([*cli, "stock", "load", str(catalogue)])
    client = redis.Redis.from_url(url)
    consumers = [spawn([*cli, "consume", "--stage", "all"], env, log) for _ in range(setup.procs)]
    try:
        wait_until(lambda: consumers_registered(client, setup.procs), 60, tail(log))
        ingest = [*cli, "ingest", str(setup.csv_path), "--json"]
        notifications = setup.work / "sp-notifications.log"
        timing = run_until_notified(setup, ingest, env, notifications, consumers, client)
        quiet([*cli, "wait", "--timeout", "120"])
    except Exception as exc:
        raise RuntimeError(f"streamproc run failed: {exc}\n{tail(log)}") from exc
    finally:
        stop(consumers)
    return timing, streamproc_outcome(client, notifications)


def streamproc_outcome(client: redis.Redis, log: Path) -> Outcome:
    """States, counters, charges, stock and notifications of the streamproc run."""
    keys = Keys()
    states: dict[str, str] = {}
    charges: dict[str, int] = {}
    last_ms = 0
    prefix = keys.order_prefix
    for key in set(client.scan_iter(match=keys.order_pattern, count=1000)):
        state, attempt, history, created = client.hmget(key, ["s", "a", "h", "c"])
        order_id = key.decode()[len(prefix) :]
        states[order_id] = state.decode()
        # The gateway keeps no charge counter: count the order's keys whose first result is ok.
        results = order_results(client, keys, order_id, int(created or 0), int(attempt or 1))
        charges[order_id] = successful_charges(results)
        last_ms = max(last_ms, order_timeline(history, created, None)[1])
    stock = {
        r.sku: (r.initial, r.available, r.reserved, r.committed) for r in show_stock(client, keys)
    }
    return Outcome(
        states=states,
        counts=_int_hash(client, keys.state_counts),
        charges=charges,
        stock=stock,
        notifications=_json_lines(log),
        last_terminal_ms=last_ms,
    )


# -- Celery -------------------------------------------------------------------------------------
def celery_env(setup: Setup, url: str) -> dict[str, str]:
    """Broker in database 1, data in database 2, the shared payment rule."""
    env = base_env()
    env.update(
        CW_BROKER_URL=with_db(url, 1),
        CW_DATA_URL=with_db(url, 2),
        CW_PAYMENT_SEED=str(setup.payment_seed),
        CW_PAYMENT_SUCCESS_RATE=str(setup.success_rate),
        CW_NOTIFICATIONS_LOG=str(setup.work / "cw-notifications.log"),
        CW_PREFETCH=str(setup.prefetch),
    )
    return env


def load_celery_stock(client: redis.Redis, skus: list[str], stock: int) -> None:
    """The same catalogue as streamproc's, in the Celery app's keys."""
    from benchmarks import celery_workflow as cw

    pipe = client.pipeline(transaction=True)
    for column, value in (("available", stock), ("initial", stock), ("reserved", 0)):
        pipe.hset(cw.STOCK[column], mapping=dict.fromkeys(skus, value))
    pipe.hset(cw.STOCK["committed"], mapping=dict.fromkeys(skus, 0))
    pipe.execute()


def broker_idle(broker: redis.Redis) -> bool:
    """No message waiting and none delivered but unacknowledged."""
    from benchmarks import celery_workflow as cw

    return broker.llen(cw.QUEUE) == 0 and broker.hlen("unacked") == 0


def run_celery(setup: Setup, url: str) -> tuple[Timing, Outcome]:
    """One prefork worker with PROCS processes, timed enqueue; then drained and read back."""
    from benchmarks import celery_workflow as cw

    env = celery_env(setup, url)
    data = redis.Redis.from_url(with_db(url, 2))
    broker = redis.Redis.from_url(with_db(url, 1))
    load_celery_stock(data, setup.skus, setup.stock)
    log = setup.work / "celery-worker.log"
    worker_argv = [sys.executable, "-m", "celery", "-A", "benchmarks.celery_workflow", "worker"]
    worker_argv += ["-c", str(setup.procs), "--pool", "prefork", "-Q", cw.QUEUE, "-n", "cw@%h"]
    worker_argv += ["--loglevel", "WARNING", "--without-gossip", "--without-mingle"]
    worker_argv += ["--without-heartbeat"]
    worker = spawn(worker_argv, env, log)
    try:
        wait_until(lambda: data.get(cw.READY) is not None, 60, tail(log))
        enqueue = [sys.executable, "-m", "benchmarks.celery_workflow", "enqueue"]
        notifications = setup.work / "cw-notifications.log"
        timing = run_until_notified(
            setup, [*enqueue, str(setup.csv_path)], env, notifications, [worker], data
        )
        wait_until(lambda: broker_idle(broker), 120, "Celery broker not drained")
    except Exception as exc:
        raise RuntimeError(f"Celery run failed: {exc}\n{tail(log)}") from exc
    finally:
        stop([worker])
    return timing, celery_outcome(data, notifications)


def celery_outcome(client: redis.Redis, log: Path) -> Outcome:
    """States, counters, charges, stock and notifications of the Celery run."""
    from benchmarks import celery_workflow as cw

    states: dict[str, str] = {}
    last_ms = 0
    prefix = cw.order_key("")
    for key in set(client.scan_iter(match=cw.order_key("*"), count=1000)):
        state, terminal_ms = client.hmget(key, ["s", "t"])
        states[key.decode()[len(prefix) :]] = state.decode()
        last_ms = max(last_ms, int(terminal_ms or 0))
    columns = [_int_hash(client, cw.STOCK[c]) for c in ("initial", "available", "reserved")]
    committed = _int_hash(client, cw.STOCK["committed"])
    stock = {
        sku: (columns[0].get(sku, 0), columns[1].get(sku, 0), columns[2].get(sku, 0), units)
        for sku, units in committed.items()
    }
    return Outcome(
        states=states,
        counts=_int_hash(client, cw.COUNTS),
        charges=_int_hash(client, cw.CHARGES),
        stock=stock,
        notifications=_json_lines(log),
        last_terminal_ms=last_ms,
    )


def _int_hash(client: redis.Redis, key: str) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in client.hgetall(key).items()}


def _json_lines(path: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line]
    except FileNotFoundError:
        return []


# -- invariants ---------------------------------------------------------------------------------
def audit(setup: Setup, out: Outcome) -> list[str]:
    """Every broken invariant, as one line each (empty: all hold)."""
    return [
        *_audit_terminal(setup, out),
        *_audit_stock(setup, out),
        *_audit_payments(setup, out),
        *_audit_notifications(out),
    ]


def _audit_terminal(setup: Setup, out: Outcome) -> list[str]:
    problems = []
    lost, extra = set(setup.orders) - set(out.states), set(out.states) - set(setup.orders)
    if lost or extra:
        problems.append(f"INV-T lost {sorted(lost)[:5]} ({len(lost)}), extra {sorted(extra)[:5]}")
    stuck = {oid: s for oid, s in out.states.items() if s not in TERMINAL}
    if stuck:
        problems.append(f"INV-T {len(stuck)} orders not terminal, e.g. {list(stuck.items())[:5]}")
    tally = Counter(out.states.values())
    counted = {state: n for state, n in out.counts.items() if n}
    if counted != dict(tally):
        problems.append(f"INV-T state counters {counted} != states {dict(tally)}")
    return problems


def _audit_stock(setup: Setup, out: Outcome) -> list[str]:
    sold: Counter[str] = Counter()
    for order_id, lines in setup.orders.items():
        if out.states.get(order_id) == "completed":
            sold.update(lines)
    problems = []
    if set(out.stock) != set(setup.skus):
        problems.append(f"INV-S SKUs differ: {sorted(set(out.stock) ^ set(setup.skus))[:5]}")
    for sku, (initial, available, reserved, committed) in out.stock.items():
        if initial != setup.stock or initial != available + reserved + committed:
            problems.append(f"INV-S {sku}: initial {initial} != {available}+{reserved}+{committed}")
        if reserved != 0 or committed != sold[sku] or available < 0:
            problems.append(f"INV-S {sku}: reserved {reserved}, committed {committed}/{sold[sku]}")
    return problems


def _audit_payments(setup: Setup, out: Outcome) -> list[str]:
    problems = []
    for order_id, state in out.states.items():
        charges = out.charges.get(order_id, 0)
        if charges != (1 if state == "completed" else 0):
            problems.append(f"INV-P {order_id} is {state} with {charges} charges")
        if state in ("completed", "rolled_back"):
            key = idempotency_key(order_id, 1)
            approved = simulated_outcome(setup.payment_seed, key, setup.success_rate)
            if approved != (state == "completed"):
                problems.append(f"INV-P {order_id} is {state}, the gateway says {approved}")
    return problems


def _audit_notifications(out: Outcome) -> list[str]:
    per_order = Counter(line["order_reference"] for line in out.notifications)
    problems = [f"INV-N {oid}: {n} lines" for oid, n in per_order.items() if n != 1]
    missing = set(out.states) - set(per_order)
    if missing:
        problems.append(f"INV-N {len(missing)} orders never notified: {sorted(missing)[:5]}")
    for line in out.notifications:
        state = out.states.get(line["order_reference"])
        kind = "success" if state == "completed" else "failed"
        if (line["order_status"], line["type"]) != (state, kind):
            problems.append(f"INV-N {line['order_reference']}: line {line['type']} for {state}")
    return problems


# -- the comparison -----------------------------------------------------------------------------
def summarise(setup: Setup, timing: Timing, out: Outcome, problems: list[str]) -> dict[str, Any]:
    """One system's figures."""
    n = len(setup.orders)
    terminal_s = out.last_terminal_ms / 1000 - timing.started
    return {
        "orders": n,
        "enqueue_seconds": round(timing.enqueued, 3),
        "terminal_seconds": round(terminal_s, 3),
        "notified_seconds": round(timing.notified, 3),
        "orders_per_s": round(n / terminal_s, 1),
        "orders_per_s_notified": round(n / timing.notified, 1),
        "server_cpu_us_per_order": round(timing.server_cpu_s * 1e6 / n, 1),
        "orders_by_state": dict(Counter(out.states.values())),
        "enqueue_report": timing.enqueue_report,
        "invariants_ok": not problems,
        "invariant_problems": problems[:20],
        "invariant_problem_count": len(problems),
    }


RUNNERS: dict[str, Callable[[Setup, str], tuple[Timing, Outcome]]] = {
    "streamproc": run_streamproc,
    "celery": run_celery,
}


def compare(
    orders: int = 20_000,
    *,
    procs: int = 2,
    seed: int = 7,
    skus: int = 1000,
    stock: int = 1_000_000,
    payment_seed: int = 0,
    success_rate: float = 0.9,
    systems: tuple[str, ...] = ("streamproc", "celery"),
    timeout_s: float = 1800,
    prefetch: int = 16,
) -> dict[str, Any]:
    """Run each system on the same file and server; figures, settings and invariant results."""
    work = Path(tempfile.mkdtemp(prefix="sp-vs-celery-"))
    try:
        csv_path = work / "orders.csv"
        with csv_path.open("w", newline="") as handle:
            rows = write_orders(handle, orders, seed=seed, skus=skus)
        setup = Setup(
            work=work,
            csv_path=csv_path,
            orders=read_orders(csv_path),
            skus=[f"SKU-{n:05d}" for n in range(skus)],
            stock=stock,
            procs=procs,
            payment_seed=payment_seed,
            success_rate=success_rate,
            timeout_s=timeout_s,
            prefetch=prefetch,
        )
        results: dict[str, Any] = {}
        with private_server() as url:
            for name in systems:
                timing, outcome = RUNNERS[name](setup, url)
                results[name] = summarise(setup, timing, outcome, audit(setup, outcome))
                reset_server(url)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    settings = {k: v for k, v in asdict(setup).items() if k not in ("work", "csv_path", "orders")}
    settings.update(orders=orders, rows=rows, skus=skus, seed=seed, systems=list(systems))
    return {"settings": settings, **results, **ratios(results)}


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    """streamproc / celery, when both ran."""
    if not {"streamproc", "celery"} <= set(results):
        return {}
    sp, cw = results["streamproc"], results["celery"]
    return {
        "ratio_streamproc_over_celery": round(sp["orders_per_s"] / cw["orders_per_s"], 2),
        "ratio_notified": round(sp["orders_per_s_notified"] / cw["orders_per_s_notified"], 2),
    }


def table(result: dict[str, Any]) -> str:
    """A plain-text summary, one line per system."""
    head = (
        f"{'system':<11} {'orders':>7} {'enqueue s':>10} {'terminal s':>11} {'orders/s':>9} "
        f"{'notified s':>11} {'orders/s':>9} {'server µs':>10}  invariants"
    )
    lines = [head, "-" * len(head)]
    for name in ("streamproc", "celery"):
        if name in result:
            r = result[name]
            lines.append(
                f"{name:<11} {r['orders']:>7,} {r['enqueue_seconds']:>10.2f} "
                f"{r['terminal_seconds']:>11.2f} {r['orders_per_s']:>9,.0f} "
                f"{r['notified_seconds']:>11.2f} {r['orders_per_s_notified']:>9,.0f} "
                f"{r['server_cpu_us_per_order']:>10.1f}  "
                f"{'ok' if r['invariants_ok'] else 'BROKEN'}"
            )
    if "ratio_streamproc_over_celery" in result:
        lines.append(
            f"streamproc / celery: {result['ratio_streamproc_over_celery']}x "
            f"(to terminal), {result['ratio_notified']}x (to notified)"
        )
    return "\n".join(lines)


def versions() -> dict[str, str]:
    """Package versions of both sides."""
    return {name: version(name) for name in ("streamproc", "celery", "kombu", "redis")}


def main() -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ORDERS} orders")
    parser.add_argument("--procs", type=int, default=2, help="consumer / worker processes")
    parser.add_argument("--seed", type=int, default=7, help="CSV generator seed")
    parser.add_argument("--skus", type=int, default=1000)
    parser.add_argument("--stock", type=int, default=1_000_000, help="units per SKU")
    parser.add_argument("--payment-seed", type=int, default=0)
    parser.add_argument("--success-rate", type=float, default=0.9)
    parser.add_argument("--prefetch", type=int, default=16, help="Celery prefetch multiplier")
    parser.add_argument("--systems", nargs="+", choices=list(RUNNERS), default=list(RUNNERS))
    parser.add_argument("--name", default="compare_celery", help="results/NAME.json")
    parser.add_argument("--output", type=Path, help="JSON file instead of results/NAME.json")
    args = parser.parse_args()
    if not celery_available():
        print(INSTALL_HINT, file=sys.stderr)
        sys.exit(2)
    result = compare(
        QUICK_ORDERS if args.quick else args.orders,
        procs=args.procs,
        seed=args.seed,
        skus=args.skus,
        stock=args.stock,
        payment_seed=args.payment_seed,
        success_rate=args.success_rate,
        systems=tuple(args.systems),
        prefetch=args.prefetch,
    )
    report = {"benchmark": "compare_celery", "machine": machine(), "versions": versions()}
    save(args.name, {**report, **result}, args.output)
    print()
    print(table(result))
    broken = [name for name in RUNNERS if name in result and not result[name]["invariants_ok"]]
    if broken:
        sys.exit(1)


if __name__ == "__main__":
    main()
