"""Process and server faults against the whole pipeline, as real processes on the session's server.

Consumers are SIGKILLed and respawned, SIGSTOPped past the claim time, signalled during a burst; the
redis-server itself is SIGKILLed and restarted on its data dir, SIGSTOPped, and flushed. After each
run the SPEC §3.2 invariants are checked (tests/invariants.py).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from streamproc.address import describe_connection_error
from streamproc.ingest import ingest_file
from streamproc.keys import STAGES, Keys
from tests.helpers import ServerHandle, ping, run_cli, spawn_cli, stop_procs
from tests.invariants import (
    assert_pipeline_invariants,
    order_ids_in,
    split_orders_csv,
    write_products,
)
from tests.support import (
    cli,
    export,
    generated_orders,
    one_line,
    status_json,
    wait_consumers_registered,
    write_orders,
)

KEYS = Keys()
TERMINAL = frozenset({"completed", "failed", "rolled_back", "dead_lettered"})
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


class Fleet:
    """The consumer processes of one test, by slot; a slot's process can be killed and replaced."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.live: dict[str, subprocess.Popen[bytes]] = {}
        self.gone: list[subprocess.Popen[bytes]] = []
        self.names: dict[str, str] = {}
        self._spawned = 0

    def start(self, slot: str, stage: str, consumer: str | None = None) -> subprocess.Popen[bytes]:
        """Start `consume --stage STAGE` in `slot`; the consumer name is new for every process."""
        self._spawned += 1
        consumer = consumer or f"{slot}.{self._spawned}"
        args = ["consume", "--stage", stage, "--consumer", consumer]
        self.names[slot] = consumer
        log_path = self.log_dir / f"consume-{self._spawned:03d}-{slot}.log"
        proc = spawn_cli(args, self.env, log_path=log_path)
        self.live[slot] = proc
        return proc

    def kill(self, slot: str) -> subprocess.Popen[bytes]:
        """SIGKILL the slot's process (a crash) and wait for it."""
        proc = self.live.pop(slot)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        self.gone.append(proc)
        return proc

    def respawn(self, slot: str, stage: str) -> subprocess.Popen[bytes]:
        """A fresh process for the slot, under a new consumer name."""
        return self.start(slot, stage)

    def pids(self) -> dict[str, int]:
        """Slot → pid of the live processes."""
        return {slot: proc.pid for slot, proc in self.live.items()}

    def log_text(self) -> str:
        """Every consumer's whole output."""
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("*.log")))

    def logs(self, lines: int = 15) -> str:
        """The tail of every consumer's output, for assertion messages."""
        parts = []
        for path in sorted(self.log_dir.glob("consume-*.log")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(parts)

    def wait_registered(self, stage: str, count: int, timeout_s: float = 20) -> None:
        """Wait until `count` consumers have read from the stage's group."""
        wait_consumers_registered(self.env, stage, count, self.logs, timeout_s)

    def drain(self, timeout_s: float) -> None:
        """`streamproc wait`, then a clean SIGTERM stop of every live consumer (exit 0 each)."""
        done = run_cli(["wait", "--timeout", str(timeout_s)], self.env, timeout=timeout_s + 30)
        if done.returncode != 0:
            status = run_cli(["status"], self.env).stdout
            pytest.fail(f"not drained: {done.stderr}\n{status}\n{self.logs()}")
        for slot, proc in self.live.items():
            assert proc.poll() is None, f"consumer {slot} died during the run:\n{self.logs()}"
        codes = stop_procs(self.live.values())
        assert codes == [0] * len(codes), f"consumer exit codes {codes}\n{self.logs()}"


@pytest.fixture
def fleet(sp_env: dict[str, str], tmp_path: Path) -> Iterator[Fleet]:
    env = dict(sp_env, STREAMPROC_LOG_LEVEL="WARNING")
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    running = Fleet(env, log_dir)
    try:
        yield running
    finally:
        # Never leave a stopped child behind: SIGCONT before SIGTERM.
        for proc in running.live.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
        stop_procs(running.live.values())


def load_catalogue(env: dict[str, str], path: Path, catalogue: dict[str, int]) -> None:
    cli(["stock", "load", str(write_products(path, catalogue))], env)


def ingest_json(env: dict[str, str], path: Path) -> dict[str, Any]:
    """`ingest --json`, asserting exit 0."""
    return json.loads(cli(["ingest", str(path), "--json"], env).stdout)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rpartition(")")[2].split()
    # After the command name: field 3 is the state, so utime (14) and stime (15) are at 11, 12.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S


def terminal_count(client: redis.Redis) -> int:
    """Orders in a terminal state, from the O(1) state counters."""
    counts = client.hgetall(KEYS.state_counts)
    return sum(int(v) for k, v in counts.items() if _text(k) in TERMINAL)


def in_progress_count(client: redis.Redis) -> int:
    """Orders ingested and not yet in a terminal state, from the O(1) state counters."""
    counts = client.hgetall(KEYS.state_counts)
    return sum(int(v) for k, v in counts.items() if _text(k) not in TERMINAL)


def pending_of(client: redis.Redis, consumer: str) -> dict[str, int]:
    """Stage → entries pending for `consumer` in that stage's group."""
    out = {}
    for stage in STAGES:
        rows = client.xpending_range(
            KEYS.sources(stage)[0], stage, min="-", max="+", count=100_000, consumername=consumer
        )
        out[stage] = len(rows)
    return out


def wait_for(predicate: Any, timeout_s: float, what: str, poll_s: float = 0.02) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(poll_s)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# -- 1. soak: random SIGKILLs ------------------------------------------------------------------


SOAK_SECONDS = 60.0
SOAK_PARTS = 100


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_soak_random_sigkills_of_consumers(fleet: Fleet, r: redis.Redis, tmp_path: Path) -> None:
    """2 processes per stage; a random one is SIGKILLed every 0.5-2 s while orders flow, and
    replaced by a new process under a new consumer name.

    At full speed these 2,000 orders take about 2 s on 2 cores, so kills would mostly hit idle
    processes. The run is stretched instead: the orders arrive in SOAK_PARTS parts spread over
    the SOAK_SECONDS = 60 s kill window (one part of 20 orders every ~0.6 s, in batches of 5), and
    the gateway takes 250 ms (below the 500 ms claim time, so live consumers are not raced by
    reclaims), so both payment consumers are nearly always mid-call and every stage has work
    arriving during the whole window.
    The other stages finish a part in milliseconds, so kills rarely catch them mid-batch; their
    crash points are what STREAMPROC_FAULT (tests/test_faults_stages.py) targets.
    """
    seed, total = 2024, 2000
    env = fleet.env = dict(
        fleet.env,
        STREAMPROC_PAYMENT_SUCCESS_RATE="0.8",
        STREAMPROC_PAYMENT_SEED=str(seed),
        STREAMPROC_PAYMENT_LATENCY_MS="250",
        STREAMPROC_CLAIM_IDLE_MS="500",
        STREAMPROC_BATCH_SIZE="5",
    )
    orders_csv, catalogue = generated_orders(tmp_path / "orders.csv", total, seed=seed)
    load_catalogue(env, tmp_path / "products.csv", catalogue)
    expected = set(order_ids_in(orders_csv))
    assert len(expected) == total

    for stage in STAGES:
        for index in range(2):
            fleet.start(f"{stage}-{index}", stage)
    for stage in STAGES:
        fleet.wait_registered(stage, 2)

    parts = split_orders_csv(orders_csv, SOAK_PARTS)
    imported: list[int] = []
    feeder = threading.Thread(
        target=feed_parts,
        args=(env["STREAMPROC_REDIS_URL"], parts, SOAK_SECONDS / SOAK_PARTS, imported),
        daemon=True,
    )
    rng = random.Random(seed)
    kills: list[tuple[str, int]] = []  # (slot, entries it left pending)
    started = time.monotonic()
    feeder.start()
    while time.monotonic() - started < SOAK_SECONDS:
        time.sleep(rng.uniform(0.5, 2.0))
        slot = rng.choice(sorted(fleet.live))
        stage, name = slot.rpartition("-")[0], fleet.names[slot]
        fleet.kill(slot)
        left = pending_of(r, name)[stage]
        fleet.respawn(slot, stage)
        kills.append((slot, left))
    feeder.join(timeout=60)
    assert not feeder.is_alive()
    # The last replacement may still be importing; stopping it then is not what this tests
    # (SIGTERM handling has its own test), so give it time to come up before the drain stops it.
    time.sleep(2.0)
    assert sum(imported) == total

    fleet.drain(60)
    hits = Counter(slot.rpartition("-")[0] for slot, left in kills if left)
    print(
        f"\nsoak: {len(kills)} kills, {sum(hits.values())} left work pending "
        f"({sum(left for _, left in kills)} entries), by stage {dict(hits)}"
    )
    assert len(kills) >= SOAK_SECONDS / 2, kills
    assert hits, f"no kill ever caught a consumer with work in flight: {kills}"
    assert_pipeline_invariants(env, expected, catalogue, seed=seed, success_rate=0.8)


def feed_parts(url: str, parts: list[Path], every_s: float, imported: list[int]) -> None:
    """Ingest the parts one by one, one every `every_s` (in-process: no interpreter start-up)."""
    client = redis.Redis.from_url(url)
    try:
        next_at = time.monotonic()
        for part in parts:
            result = ingest_file(client, KEYS, str(part), "USD")
            imported.append(result.imported)
            next_at += every_s
            time.sleep(max(0.0, next_at - time.monotonic()))
    finally:
        client.close()


# -- 2. fencing: a paused payment consumer -------------------------------------------------------


def test_paused_payment_consumer_is_fenced(fleet: Fleet, r: redis.Redis, tmp_path: Path) -> None:
    """SIGSTOP a payment consumer mid-gateway-call, let another finish its orders, SIGCONT it:
    its late gateway calls are idempotent and its late commit is stale (changes nothing)."""
    seed, count = 3, 20
    env = fleet.env = dict(
        fleet.env,
        STREAMPROC_PAYMENT_SUCCESS_RATE="0.7",
        STREAMPROC_PAYMENT_SEED=str(seed),
        # Long enough that a busy runner still stops payment-a inside its gateway sleep.
        STREAMPROC_PAYMENT_LATENCY_MS="1500",
        STREAMPROC_CLAIM_IDLE_MS="1000",
    )
    catalogue = {"SKU-F": 1000}
    load_catalogue(env, tmp_path / "products.csv", catalogue)
    orders_csv = write_orders(
        tmp_path / "orders.csv", [one_line(f"F{i:03d}", "SKU-F", 1) for i in range(count)]
    )
    for stage in ("reserve", "finalize", "rollback", "notify", "snapshot"):
        fleet.start(stage, stage)
    first = fleet.start("payment-a", "payment", consumer="payment-a")
    for stage in STAGES:
        fleet.wait_registered(stage, 1)

    assert ingest_json(env, orders_csv)["imported"] == count
    # All orders are read by payment-a and it sleeps in the gateway call (1.5 s): stop it there.
    wait_for(
        lambda: pending_of(r, "payment-a")["payment"] == count, 10, "payment-a to read the orders"
    )
    os.kill(first.pid, signal.SIGSTOP)
    try:
        assert r.hget(KEYS.gateway_stats, "calls") is None, "payment-a called the gateway already"
        fleet.start("payment-b", "payment", consumer="payment-b")
        cli(["wait", "--timeout", "30"], env, timeout=60)
        before = export(env)
        status_before = status_json(env)
        added_before = {s: r.xinfo_stream(KEYS.stream(s))["entries-added"] for s in STAGES}
        assert r.hgetall(KEYS.gateway_stats) == {"calls": str(count), "recorded": str(count)}
        assert pending_of(r, "payment-a")["payment"] == 0, "payment-b never took the entries over"
    finally:
        os.kill(first.pid, signal.SIGCONT)

    # payment-a wakes up, calls the gateway for the same keys, commits; then SIGTERM makes it
    # finish whatever is still in flight and exit 0, so its late commit has surely run.
    wait_for(
        lambda: r.hget(KEYS.gateway_stats, "calls") == str(2 * count), 10, "payment-a's late call"
    )
    first.terminate()
    assert first.wait(timeout=10) == 0, fleet.logs()
    fleet.live.pop("payment-a")

    stats = r.hgetall(KEYS.gateway_stats)
    assert stats == {"calls": str(2 * count), "recorded": str(count)}, stats
    after = export(env)
    assert after == before, "the paused consumer's late commit changed an order"
    assert status_json(env) == status_before
    added_after = {s: r.xinfo_stream(KEYS.stream(s))["entries-added"] for s in STAGES}
    assert added_after == added_before, "the late commit enqueued an order again"
    for order in after.values():
        for state in ("paid", "rolled_back", "completed"):
            assert order["history"].count(f"{state}@") <= 1, order
        assert order["charges"] <= 1, order
    states = Counter(order["state"] for order in after.values())
    assert states["completed"] > 0 and states["rolled_back"] > 0, states

    fleet.drain(30)
    assert_pipeline_invariants(
        env, set(after), catalogue, seed=seed, success_rate=0.7, failure_reasons=set()
    )


# -- 3. redis-server SIGKILLed and restarted -----------------------------------------------------

# Longer than redis-py's own retries (about 5 s, streamproc.connection), so the consumers' run
# loops see the errors and must recover by themselves.
SERVER_DOWN_S = 6.0


@pytest.mark.slow
def test_server_killed_and_restarted_mid_run(
    redis_server: ServerHandle, fleet: Fleet, r: redis.Redis, tmp_path: Path
) -> None:
    seed, total = 13, 2000
    env = fleet.env = dict(
        fleet.env,
        STREAMPROC_PAYMENT_SUCCESS_RATE="0.8",
        STREAMPROC_PAYMENT_SEED=str(seed),
        # Payments are mid-call when the server dies: their commits fail and are redone later.
        STREAMPROC_PAYMENT_LATENCY_MS="500",
        STREAMPROC_BATCH_SIZE="50",
    )
    orders_csv, catalogue = generated_orders(tmp_path / "orders.csv", total, seed=seed)
    load_catalogue(env, tmp_path / "products.csv", catalogue)
    fleet.start("all-0", "all")
    fleet.start("all-1", "all")
    for stage in STAGES:
        fleet.wait_registered(stage, 2)
    pids = fleet.pids()

    parts = split_orders_csv(orders_csv, 10)
    acknowledged: list[tuple[Path, float]] = []
    failed_runs: list[str] = []

    def feed() -> None:
        for part in parts:
            while True:
                done = run_cli(["ingest", str(part), "--json", "--batch-size", "50"], env)
                if done.returncode == 0:
                    acknowledged.append((part, time.monotonic()))
                    break
                failed_runs.append(f"{part.name}: exit {done.returncode} {done.stderr.strip()}")
                # Server down: re-run the same part once it is back (ingest is idempotent).
                deadline = time.monotonic() + 60
                while not ping(redis_server.url) and time.monotonic() < deadline:
                    time.sleep(0.2)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    wait_for(lambda: len(acknowledged) >= 3, 30, "three ingested parts")
    in_progress = in_progress_count(r)
    killed_at = time.monotonic()
    redis_server.kill()
    try:
        time.sleep(SERVER_DOWN_S)
        for slot, proc in fleet.live.items():
            assert proc.poll() is None, f"{slot} died while the server was down\n{fleet.logs()}"
    finally:
        redis_server.start()

    # Every order of a part whose ingest had been acknowledged before the kill is still there.
    before_kill = [part for part, at in acknowledged if at < killed_at]
    assert len(before_kill) >= 3
    ids = [oid for part in before_kill for oid in order_ids_in(part)]
    with r.pipeline(transaction=False) as pipe:
        for oid in ids:
            pipe.exists(KEYS.order(oid))
        present = pipe.execute()
    lost = [oid for oid, ok in zip(ids, present, strict=True) if not ok]
    assert not lost, f"{len(lost)} acknowledged orders lost: {lost[:10]}"

    feeder.join(timeout=120)
    assert not feeder.is_alive()
    assert len(acknowledged) == len(parts)
    fleet.drain(90)
    # The same processes, never restarted, did all the work after the restart.
    assert fleet.pids() == pids
    assert not fleet.gone
    print(f"\nserver kill: {in_progress} orders in progress; failed ingest runs: {failed_runs}")
    assert in_progress > 0, "the server was killed after the work was done"
    assert failed_runs, "no ingest was running into the outage"
    assert_pipeline_invariants(
        env, set(order_ids_in(orders_csv)), catalogue, seed=seed, success_rate=0.8
    )


# -- 4. redis-server SIGSTOPped ------------------------------------------------------------------

SERVER_PAUSE_S = 5.0
MAX_CPU_DURING_PAUSE_S = 0.5


@pytest.mark.slow
def test_server_paused_consumers_wait_quietly_and_recover(
    redis_server: ServerHandle, fleet: Fleet, r: redis.Redis, tmp_path: Path
) -> None:
    seed, total = 17, 3000
    env = fleet.env = dict(
        fleet.env,
        STREAMPROC_PAYMENT_SUCCESS_RATE="0.8",
        STREAMPROC_PAYMENT_SEED=str(seed),
        STREAMPROC_PAYMENT_LATENCY_MS="100",
        STREAMPROC_BATCH_SIZE="20",
    )
    orders_csv, catalogue = generated_orders(tmp_path / "orders.csv", total, seed=seed)
    load_catalogue(env, tmp_path / "products.csv", catalogue)
    for stage in STAGES:
        for index in range(2):
            fleet.start(f"{stage}-{index}", stage)
    for stage in STAGES:
        fleet.wait_registered(stage, 2)
    pids = fleet.pids()
    assert ingest_json(env, orders_csv)["imported"] == total
    wait_for(lambda: terminal_count(r) >= total // 10, 30, "a tenth of the orders to finish")

    cpu_before = {slot: cpu_seconds(pid) for slot, pid in pids.items()}
    in_progress = in_progress_count(r)
    redis_server.pause()
    try:
        time.sleep(SERVER_PAUSE_S)
        cpu_used = {slot: cpu_seconds(pid) - cpu_before[slot] for slot, pid in pids.items()}
    finally:
        redis_server.resume()
    print(f"\nCPU seconds per consumer over a {SERVER_PAUSE_S:g} s server pause: {cpu_used}")
    assert in_progress > 0
    busy = {slot: s for slot, s in cpu_used.items() if s >= MAX_CPU_DURING_PAUSE_S}
    assert not busy, f"consumers spun while the server was paused: {busy}"

    fleet.drain(60)
    assert fleet.pids() == pids
    assert_pipeline_invariants(
        env, set(order_ids_in(orders_csv)), catalogue, seed=seed, success_rate=0.8
    )


# -- 5. stream lengths stay bounded over 50,000 orders -------------------------------------------

# One atomic look at every stage stream: its length, the group's undelivered (lag), pending and
# delivered-so-far (entries-read) counts, and whether the oldest pending entries still have their
# bodies -- checked in the same step, so an entry acked and then trimmed between two calls cannot be
# mistaken for a pending one that was trimmed.
SAMPLE_LUA = """
local out = {}
local sample = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  local group = ARGV[i + 1]
  local length = redis.call("XLEN", key)
  local lag, pending, read = -1, 0, 0
  for _, g in ipairs(redis.call("XINFO", "GROUPS", key)) do
    local fields = {}
    for j = 1, #g, 2 do fields[g[j]] = g[j + 1] end
    if fields["name"] == group then
      pending = fields["pending"]
      if type(fields["lag"]) == "number" then lag = fields["lag"] end
      if type(fields["entries-read"]) == "number" then read = fields["entries-read"] end
    end
  end
  local checked, missing = 0, 0
  if pending > 0 then
    for _, row in ipairs(redis.call("XPENDING", key, group, "-", "+", sample)) do
      checked = checked + 1
      if #redis.call("XRANGE", key, row[1], row[1]) == 0 then missing = missing + 1 end
    end
  end
  out[i] = {length, lag, pending, read, checked, missing}
end
return out
"""
BIG_RUN_ORDERS = 50_000
SAMPLE_EVERY_S = 0.2
# Approximate trimming (XTRIM MINID ~) only frees whole radix-tree nodes, and a node holds at most
# stream-node-max-entries = 100 entries (the default of Redis and Valkey; fewer when 4 kB fill it
# first). So a drained stream keeps at most the one node holding its last entry: <= 100 entries.
NODE_ENTRIES = 100
# Every consumer trims each of its stages once a second, so between two trims the acked entries
# pile up: at ~10k orders/s that is ~10k entries, and a fixed bound (25,000) would not hold for
# notify, whose undelivered backlog alone reaches ~30k here because ingest outruns it. The bound
# used instead: a stream holds what its group still needs (undelivered + pending) plus what was
# acked within the last TRIM_WINDOW_S -- a 1 s trim period, the oldest in-flight batch holding the
# floor back, and event-loop lag on a CPU-bound 2-core box (measured worst: ~2/3 of a 3 s window).
TRIM_WINDOW_S = 4.0


class Sample:
    """One SAMPLE_LUA row of one stage."""

    def __init__(self, at: float, row: list[int]) -> None:
        self.at = at
        self.length, self.lag, self.pending, self.read, self.checked, self.missing = row

    @property
    def acked_but_kept(self) -> int:
        """Entries delivered and acked that are still stored (all pending ones are delivered)."""
        return self.length - self.lag - self.pending


class StreamSampler(threading.Thread):
    """Samples every stage stream (SAMPLE_LUA) every SAMPLE_EVERY_S until halted."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.client = redis.Redis.from_url(url)
        self.script = self.client.register_script(SAMPLE_LUA)
        self.halt = threading.Event()
        self.samples: dict[str, list[Sample]] = {stage: [] for stage in STAGES}
        self.error: BaseException | None = None

    def run(self) -> None:
        # The stream each stage's work arrives on: notify's group shares the facts stream.
        keys = [KEYS.sources(s)[0] for s in STAGES]
        try:
            while not self.halt.is_set():
                rows = self.script(keys=keys, args=[20, *STAGES])
                now = time.monotonic()
                for stage, row in zip(STAGES, rows, strict=True):
                    self.samples[stage].append(Sample(now, [int(x) for x in row]))
                self.halt.wait(SAMPLE_EVERY_S)
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.client.close()


def trim_bound(samples: list[Sample], index: int) -> int:
    """How many acked entries may still be stored at samples[index]: those acked in the last
    TRIM_WINDOW_S (at most what was pending then plus what was delivered since) plus two nodes."""
    now = samples[index]
    earlier = [s for s in samples[:index] if s.at <= now.at - TRIM_WINDOW_S]
    if not earlier:
        return now.read + 2 * NODE_ENTRIES
    then = earlier[-1]
    return then.pending + (now.read - then.read) + 2 * NODE_ENTRIES


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_fifty_thousand_orders_keep_streams_bounded(
    fleet: Fleet, r: redis.Redis, tmp_path: Path
) -> None:
    """The length of every stage stream is bounded by what its group still needs, trimming keeps
    up, never removes a pending entry, and a drained stream is down to one node."""
    seed = 23
    env = fleet.env = dict(
        fleet.env,
        STREAMPROC_PAYMENT_SUCCESS_RATE="0.8",
        STREAMPROC_PAYMENT_SEED=str(seed),
    )
    orders_csv, catalogue = generated_orders(tmp_path / "orders.csv", BIG_RUN_ORDERS, seed=seed)
    load_catalogue(env, tmp_path / "products.csv", catalogue)
    fleet.start("all-0", "all")
    fleet.start("all-1", "all")
    for stage in STAGES:
        fleet.wait_registered(stage, 2)

    sampler = StreamSampler(env["STREAMPROC_REDIS_URL"])
    sampler.start()
    started = time.monotonic()
    try:
        assert ingest_json(env, orders_csv)["imported"] == BIG_RUN_ORDERS
        cli(["wait", "--timeout", "240"], env, timeout=300)
        elapsed = time.monotonic() - started
        # Let the trimmers (once a second in each consumer) run on the drained streams.
        time.sleep(2.5)
    finally:
        sampler.halt.set()
        sampler.join(timeout=10)
    assert sampler.error is None, sampler.error
    final_lengths = {s: int(r.xlen(KEYS.sources(s)[0])) for s in STAGES}
    added = {s: int(r.xinfo_stream(KEYS.sources(s)[0])["entries-added"]) for s in STAGES}
    fleet.drain(30)

    report = {}
    for stage, samples in sampler.samples.items():
        assert len(samples) > 10
        assert all(s.lag >= 0 for s in samples), f"{stage}: the group's lag was not available"
        # No pending entry was ever trimmed.
        assert sum(s.missing for s in samples) == 0, f"{stage}: a pending entry was trimmed"
        # The length is what the group still needs (undelivered + pending) plus entries acked
        # within the last TRIM_WINDOW_S; it never grows with the number of orders processed.
        # On a stream two groups read (the facts stream: notify and snapshot), what is kept is
        # what the group furthest behind still needs, plus what the last of them acked lately.
        sharing = [t for t in STAGES if KEYS.sources(t)[0] == KEYS.sources(stage)[0]]
        tightest = 0.0
        for index, sample in enumerate(samples):
            peers = [sampler.samples[t][index] for t in sharing]
            kept = sample.length - max(p.lag + p.pending for p in peers)
            bound = max(trim_bound(sampler.samples[t], index) for t in sharing)
            assert kept <= bound, (stage, index, [p.__dict__ for p in peers], bound)
            if samples[0].at <= sample.at - TRIM_WINDOW_S:  # before that the bound is trivial
                tightest = max(tightest, kept / bound)
        report[stage] = {
            "added": added[stage],
            "max_length": max(s.length for s in samples),
            "max_needed": max(s.lag + s.pending for s in samples),
            "max_acked_but_kept": max(s.acked_but_kept for s in samples),
            "acked_but_kept_over_bound": round(tightest, 2),
            "final_length": final_lengths[stage],
            "pending_checked": sum(s.checked for s in samples),
        }
        assert final_lengths[stage] <= NODE_ENTRIES, (stage, final_lengths)
    print(f"\n{BIG_RUN_ORDERS} orders drained in {elapsed:.1f} s: {json.dumps(report)}")
    assert sum(row["pending_checked"] for row in report.values()) > 0
    assert "deleted by someone else" not in fleet.log_text()
    assert_pipeline_invariants(
        env, set(order_ids_in(orders_csv)), catalogue, seed=seed, success_rate=0.8
    )


# -- 6. SIGTERM during a burst -------------------------------------------------------------------

GRACE_S = 4.0


@pytest.mark.slow
def test_sigterm_during_a_burst_finishes_in_flight_work(
    fleet: Fleet, r: redis.Redis, tmp_path: Path
) -> None:
    seed, total = 29, 3000
    env = fleet.env = dict(
        fleet.env,
        STREAMPROC_PAYMENT_SUCCESS_RATE="0.8",
        STREAMPROC_PAYMENT_SEED=str(seed),
        STREAMPROC_PAYMENT_LATENCY_MS="200",
        STREAMPROC_SHUTDOWN_GRACE_S=str(GRACE_S),
        STREAMPROC_CLAIM_IDLE_MS="1000",
    )
    orders_csv, catalogue = generated_orders(tmp_path / "orders.csv", total, seed=seed)
    load_catalogue(env, tmp_path / "products.csv", catalogue)
    proc = fleet.start("burst", "all", consumer="burst")
    for stage in STAGES:
        fleet.wait_registered(stage, 1)
    assert ingest_json(env, orders_csv)["imported"] == total
    wait_for(lambda: pending_of(r, "burst")["payment"] > 0, 20, "payments in flight")
    in_flight = pending_of(r, "burst")
    proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    code = proc.wait(timeout=GRACE_S + 10)
    exit_s = time.monotonic() - signalled
    fleet.live.pop("burst")
    print(f"\nSIGTERM with {in_flight} pending: exit {code} after {exit_s:.2f} s")
    assert code == 0, fleet.logs()
    assert exit_s <= GRACE_S + 1.0
    assert pending_of(r, "burst") == dict.fromkeys(STAGES, 0), "in-flight work was left unacked"
    assert terminal_count(r) < total, "the burst was over before the signal"

    # Two signals in a row: out at once, the unacked work waits for someone else. A few more
    # orders, so there is payment work for it however far the burst got before its signal.
    more_csv = write_orders(
        tmp_path / "more.csv", [one_line(f"H{i:04d}", "SKU-G05", 1) for i in range(400)]
    )
    assert ingest_json(env, more_csv)["imported"] == 400
    second = fleet.start("double", "all", consumer="double")
    # A payment batch in flight takes 200 ms: both signals land while it sleeps in the gateway.
    wait_for(lambda: pending_of(r, "double")["payment"] > 0, 20, "payments in flight")
    second.send_signal(signal.SIGTERM)
    time.sleep(0.02)
    second.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    code = second.wait(timeout=GRACE_S + 10)
    exit_s = time.monotonic() - signalled
    fleet.live.pop("double")
    left = pending_of(r, "double")
    print(f"double SIGTERM: exit {code} after {exit_s:.2f} s, left pending {left}")
    assert code == 128 + signal.SIGTERM, fleet.logs()
    assert exit_s < 1.0
    assert sum(left.values()) > 0, "nothing was left unacked: the double signal proved nothing"

    fleet.start("fresh", "all", consumer="fresh")
    fleet.drain(60)
    assert pending_of(r, "double") == dict.fromkeys(STAGES, 0)
    accepted = set(order_ids_in(orders_csv)) | set(order_ids_in(more_csv))
    assert_pipeline_invariants(env, accepted, catalogue, seed=seed, success_rate=0.8)


# -- 7. the server lost its data -----------------------------------------------------------------


def test_flushall_under_a_running_consumer_exits_loudly(
    fleet: Fleet, r: redis.Redis, tmp_path: Path
) -> None:
    env = fleet.env
    orders_csv = write_orders(
        tmp_path / "orders.csv", [one_line(f"L{i:03d}", "SKU-L", 1) for i in range(50)]
    )
    proc = fleet.start("victim", "all", consumer="victim")
    for stage in STAGES:
        fleet.wait_registered(stage, 1)
    ingest_json(env, orders_csv)
    cli(["wait", "--timeout", "30"], env)

    r.flushall()
    code = proc.wait(timeout=15)
    fleet.live.pop("victim")
    output = fleet.log_text()
    assert code == 3, output
    errors = [line for line in output.splitlines() if " ERROR " in line]
    assert errors, output
    assert any("consumer group" in line and "missing" in line for line in errors), output
    assert "Traceback" not in output
    # Nothing was re-created behind the operator's back.
    assert r.keys("*") == []


def test_error_chained_to_itself_still_gets_a_one_line_description() -> None:
    """`raise _lost_data(exc) from exc` returns exc itself for other errors: a self-cause loop,
    which once made describe_connection_error spin forever (a consumer stuck at 100% CPU)."""
    error = redis.ResponseError("UNBLOCKED something else")
    error.__cause__ = error
    described = describe_connection_error("redis://127.0.0.1:1/0", error)
    assert str(described) == "cannot reach Redis at 127.0.0.1:1: UNBLOCKED something else"
