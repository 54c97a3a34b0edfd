"""End-to-end pipeline benchmark: orders/s, ingest→terminal latency, CPU and memory per order.

    python -m benchmarks.pipeline [--orders 200000] [--procs 2] [--latency-ms 0] [--rate N]

Starts a private server, generates a seeded CSV, runs PROCS `streamproc consume --stage all`
processes, feeds the orders, waits until drained, and reads each order's ingest→terminal latency
from its history (its pending step to its terminal one, stamped by the scripts).

Two ways to feed the orders:
- flood (default): one `streamproc ingest FILE` of the whole CSV. This measures the maximum
  throughput; the latency figures are then mostly queueing behind the flood.
- `--rate N`: the CSV is cut into chunks of `N * chunk-ms / 1000` orders, and each chunk is
  ingested (the library's `ingest_file`, in this process) on a fixed schedule, so the latency is
  measured at a given load. Run it at half the flood's orders/s for "latency at half load".
  (`ingest -` would not do: standard input is read whole before anything is imported.)

The result also holds the CPU seconds the server and the consumers used during the run (from
/proc, so Linux only; 0 elsewhere), per order, the server's busiest commands, and Redis memory
per order after the run. Results go to benchmarks/results/<name>.json, where the default name is
pipeline, pipeline_latency<ms>, pipeline_rate<N> or pipeline_latency<ms>_rate<N>.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import redis

from benchmarks.common import (
    add_server_config_option,
    machine,
    pipeline_env,
    private_server,
    process_cpu_seconds,
    save,
    server_config_of,
)
from benchmarks.generate import write_orders
from benchmarks.memory import memory_by_family
from benchmarks.timeline import Timeline
from streamproc.keys import STAGES, Keys
from streamproc.orderview import order_timeline
from streamproc.status import collect_status


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _histories(client: redis.Redis, keys: Keys) -> list[list[int]]:
    """The times (ms) of every order's history steps: ingested, …, terminal."""
    out: list[list[int]] = []
    batch: list[bytes] = []

    def load() -> None:
        pipe = client.pipeline(transaction=False)
        for key in batch:
            pipe.hmget(key, "h", "c")
        for history, created in pipe.execute():
            if history:
                steps, _ = order_timeline(history, created, None)
                out.append([step.at_ms for step in steps])
        batch.clear()

    seen: set[bytes] = set()
    for key in client.scan_iter(match=keys.order_pattern, count=1000):
        if key not in seen:
            seen.add(key)
            batch.append(key)
            if len(batch) >= 1000:
                load()
    if batch:
        load()
    return out


def _split_csv(csv_path: Path, work: Path, per_chunk: int) -> list[Path]:
    """Cut the CSV into files of `per_chunk` orders (an order's rows stay together)."""
    lines = csv_path.read_text().splitlines(keepends=True)
    header, body = lines[0], lines[1:]
    chunks: list[Path] = []
    current: list[str] = []
    orders = 0
    last_id = ""
    for line in body:
        order_id = line.split(",", 1)[0]
        if order_id != last_id:
            if orders == per_chunk:
                chunks.append(_write_chunk(work, len(chunks), header, current))
                current, orders = [], 0
            orders += 1
            last_id = order_id
        current.append(line)
    if current:
        chunks.append(_write_chunk(work, len(chunks), header, current))
    return chunks


def _write_chunk(work: Path, n: int, header: str, lines: list[str]) -> Path:
    path = work / f"chunk-{n:06d}.csv"
    path.write_text(header + "".join(lines))
    return path


def _feed_at_rate(url: str, chunks: list[Path], interval_s: float) -> dict[str, float]:
    """Ingest chunk k at start + k * interval (at once when behind); returns feeding figures."""
    from streamproc.connection import sync_client
    from streamproc.ingest import ingest_file

    client = sync_client(url)
    keys = Keys()
    cpu_before = time.process_time()
    started = time.perf_counter()
    late_max = 0.0
    for n, chunk in enumerate(chunks):
        due = started + n * interval_s
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        else:
            late_max = max(late_max, -delay)
        ingest_file(client, keys, str(chunk), "USD", rejects_path=chunk.with_suffix(".rej"))
    seconds = time.perf_counter() - started
    client.close()
    return {
        "feed_seconds": seconds,
        "feed_cpu_seconds": time.process_time() - cpu_before,
        "feed_late_max_ms": late_max * 1000,
    }


def _server_commandstats(client: redis.Redis, orders: int) -> dict[str, dict[str, float]]:
    """The server's twelve costliest commands: calls, µs per call and µs per order."""
    stats = client.info("commandstats")
    rows = sorted(
        ((name.removeprefix("cmdstat_"), row) for name, row in stats.items()),
        key=lambda item: -int(item[1]["usec"]),
    )
    return {
        name: {
            "calls": int(row["calls"]),
            "usec_per_call": round(float(row["usec_per_call"]), 2),
            "usec_per_order": round(int(row["usec"]) / max(1, orders), 2),
        }
        for name, row in rows[:12]
    }


@dataclass
class _Measured:
    """What one drive of the pipeline measured."""

    ingest_seconds: float = 0.0
    total_seconds: float = 0.0
    cpu_server: float = 0.0
    cpu_rewrites: float = 0.0
    aof_rewrites: int = 0
    cpu_consumers: float = 0.0
    cpu_ingest: float = 0.0
    feed: dict[str, float] = field(default_factory=dict)


def _drive(
    url: str,
    env: dict[str, str],
    procs: int,
    csv_path: Path,
    chunks: list[Path],
    interval_s: float,
    on_started: Callable[[int, list[int]], object] | None = None,
    on_drained: Callable[[], object] | None = None,
) -> _Measured:
    """Start the consumers, feed the orders (one ingest, or chunks on a schedule), wait until
    drained; the clock and the CPU counters start once the consumers are up. `on_started` gets
    the server's PID and the consumers' then, before the clock starts, and `on_drained` runs
    before they are stopped (the profilers attach, and detach; benchmarks.aof marks the AOF)."""
    client = redis.Redis.from_url(url)
    server_pid = int(client.info("server")["process_id"])
    cli = [sys.executable, "-m", "streamproc"]
    consumers = [
        subprocess.Popen([*cli, "consume", "--stage", "all"], env=env) for _ in range(procs)
    ]
    out = _Measured()
    try:
        time.sleep(1.5)  # let the consumers start before the clock does
        if on_started:
            on_started(server_pid, [p.pid for p in consumers])
        client.config_resetstat()
        cpu_server = process_cpu_seconds(server_pid)
        cpu_rewrites = process_cpu_seconds(server_pid, children=True)
        rewrites = int(client.info("persistence")["aof_rewrites"])
        cpu_consumers = sum(process_cpu_seconds(p.pid) for p in consumers)
        cpu_children = _children_cpu_seconds()
        started = time.perf_counter()
        if chunks:
            out.feed = _feed_at_rate(url, chunks, interval_s)
            out.cpu_ingest = out.feed["feed_cpu_seconds"]
        else:
            subprocess.run(
                [*cli, "ingest", str(csv_path), "--json"],
                env=env,
                check=True,
                stdout=subprocess.DEVNULL,
            )
            out.cpu_ingest = _children_cpu_seconds() - cpu_children
        out.ingest_seconds = time.perf_counter() - started
        subprocess.run(
            [*cli, "wait", "--timeout", "3600"], env=env, check=True, stdout=subprocess.DEVNULL
        )
        out.total_seconds = time.perf_counter() - started
        out.cpu_server = process_cpu_seconds(server_pid) - cpu_server
        out.cpu_rewrites = process_cpu_seconds(server_pid, children=True) - cpu_rewrites
        out.aof_rewrites = int(client.info("persistence")["aof_rewrites"]) - rewrites
        out.cpu_consumers = sum(process_cpu_seconds(p.pid) for p in consumers) - cpu_consumers
        _wait_trimmed(client)
        if on_drained:
            on_drained()
    finally:
        for proc in consumers:
            proc.terminate()
        for proc in consumers:
            proc.wait(30)
        client.close()
    return out


class Profiler(Protocol):
    """Something that samples a flood: attached once the consumers are up (the server's PID and
    theirs), detached once drained, stopped whatever happens."""

    def attach(self, server: int, consumers: list[int]) -> None: ...

    def detach(self) -> None: ...

    def stop(self) -> None: ...


def flood_figures(m: _Measured, orders: int, procs: int) -> dict[str, Any]:
    """What every profiled flood reports besides its profile: size, speed, CPU per order."""
    return {
        "orders": orders,
        "consumer_processes": procs,
        "total_seconds": round(m.total_seconds, 3),
        "orders_per_s": round(orders / m.total_seconds, 1),
        "cpu_us_per_order": {
            "server": round(m.cpu_server / orders * 1e6, 1),
            "consumers": round(m.cpu_consumers / orders * 1e6, 1),
        },
    }


def profiled_flood(work: Path, orders: int, procs: int, profiler: Profiler) -> _Measured:
    """A flood of `orders` (a seeded CSV written to `work`) through `procs` consumers on a private
    server, sampled by `profiler` (profile_consumers, profile_server)."""
    csv_path = work / "orders.csv"
    with csv_path.open("w", newline="") as handle:
        write_orders(handle, orders)
    with private_server() as url:
        try:
            env = pipeline_env(url, work / "home")
            return _drive(
                url,
                env,
                procs,
                csv_path,
                [],
                0.0,
                on_started=profiler.attach,
                on_drained=profiler.detach,
            )
        finally:
            profiler.stop()


def _wait_trimmed(client: redis.Redis, timeout_s: float = 5.0) -> None:
    """Until the consumers' once-a-second trim has run after the drain (at most one entry left
    per stage stream), so the memory per order is measured with the streams trimmed."""
    keys = Keys()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sum(int(client.xlen(keys.stream(stage))) for stage in STAGES) <= len(STAGES):
            return
        time.sleep(0.1)


def _latency_figures(stamps: list[list[int]]) -> dict[str, Any]:
    """Percentiles of ingest→terminal, and of the time each step took."""
    latencies = [float(steps[-1] - steps[0]) for steps in stamps]
    # Time spent reaching each step: 1 = reserve (pending → reserved/failed), 2 = payment
    # (reserved → completed/rolled_back, the settlement included).
    step_ms: dict[str, dict[str, float]] = {}
    for k, name in ((1, "reserve"), (2, "payment")):
        gaps = [float(s[k] - s[k - 1]) for s in stamps if len(s) > k]
        if gaps:
            step_ms[name] = {
                "p50": round(_percentile(gaps, 0.5), 1),
                "p99": round(_percentile(gaps, 0.99), 1),
            }
    return {
        "latency_p50_ms": round(_percentile(latencies, 0.5), 1),
        "latency_p90_ms": round(_percentile(latencies, 0.9), 1),
        "latency_p99_ms": round(_percentile(latencies, 0.99), 1),
        "latency_max_ms": round(max(latencies, default=0.0), 1),
        "latency_by_stage_ms": step_ms,
    }


def run(
    orders: int,
    procs: int,
    latency_ms: int,
    rate: int = 0,
    chunk_ms: int = 50,
    extra_env: dict[str, str] | None = None,
    server_config: dict[str, str] | None = None,
    timeline: bool = False,
) -> dict[str, object]:
    """One measured run: flood when `rate` is 0, else `rate` orders/s in chunks of chunk_ms.

    `server_config` is applied with CONFIG SET before anything runs (default: none, the server
    as `benchmarks.common.private_server` starts it); `timeline` adds benchmarks.timeline's
    samples of the run."""
    work = Path(tempfile.mkdtemp(prefix="sp-pipe-"))
    try:
        return _run_in(
            work, orders, procs, latency_ms, rate, chunk_ms, extra_env, server_config, timeline
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the CSV, its chunks, the notifications log


def _run_in(
    work: Path,
    orders: int,
    procs: int,
    latency_ms: int,
    rate: int,
    chunk_ms: int,
    extra_env: dict[str, str] | None,
    server_config: dict[str, str] | None,
    timeline: bool = False,
) -> dict[str, object]:
    csv_path = work / "orders.csv"
    with csv_path.open("w", newline="") as handle:
        rows = write_orders(handle, orders)
    chunks: list[Path] = []
    interval_s = chunk_ms / 1000
    if rate:
        per_chunk = max(1, round(rate * interval_s))
        chunks = _split_csv(csv_path, work, per_chunk)
        interval_s = per_chunk / rate
    with private_server() as url:
        env = pipeline_env(url, work / "home", latency_ms)
        env.update(extra_env or {})
        with redis.Redis.from_url(url) as admin:
            for name, value in (server_config or {}).items():
                admin.config_set(name, value)
        sampler = Timeline(url) if timeline else None
        try:
            m = _drive(
                url,
                env,
                procs,
                csv_path,
                chunks,
                interval_s,
                on_started=sampler.attach if sampler else None,
                on_drained=sampler.detach if sampler else None,
            )
        finally:
            if sampler:
                sampler.detach()
        client = redis.Redis.from_url(url)
        keys = Keys()
        status = collect_status(client, keys)
        commands = _server_commandstats(client, orders)
        stamps = _histories(client, keys)
        memory = int(client.info("memory")["used_memory"])
        by_family = memory_by_family(client, keys)
        client.close()
    span_s = (max(s[-1] for s in stamps) - min(s[0] for s in stamps)) / 1000 if stamps else 0.0
    result: dict[str, Any] = {
        "orders": orders,
        "rows": rows,
        "consumer_processes": procs,
        "gateway_latency_ms": latency_ms,
        "mode": f"rate {rate}/s in {round(interval_s * 1000)} ms chunks" if rate else "flood",
        "server_config": server_config or {},
        "env": extra_env or {},
        "ingest_seconds": round(m.ingest_seconds, 3),
        "ingest_orders_per_s": round(orders / m.ingest_seconds, 1),
        "total_seconds": round(m.total_seconds, 3),
        "orders_per_s": round(orders / m.total_seconds, 1),
        "orders_per_s_first_ingest_to_last_terminal": round(orders / span_s, 1) if span_s else 0,
        **_latency_figures(stamps),
        # The server's own process; its AOF rewrites run in forked children, counted apart (a
        # rewrite still running when the run ends is not counted).
        "cpu_seconds": {
            "server": round(m.cpu_server, 2),
            "server_aof_rewrites": round(m.cpu_rewrites, 2),
            "consumers": round(m.cpu_consumers, 2),
            "ingest": round(m.cpu_ingest, 2),
        },
        "cpu_us_per_order": {
            "server": round(m.cpu_server / orders * 1e6, 1),
            "server_aof_rewrites": round(m.cpu_rewrites / orders * 1e6, 1),
            "consumers": round(m.cpu_consumers / orders * 1e6, 1),
            "ingest": round(m.cpu_ingest / orders * 1e6, 1),
        },
        "aof_rewrites": m.aof_rewrites,
        "server_top_commands": commands,
        "orders_by_state": status.orders,
        "redis_used_memory_bytes": memory,
        "redis_bytes_per_order": round(memory / orders, 1),
        # Keys only (used_memory also holds buffers, the script cache and allocator overhead).
        "redis_key_bytes_per_order": {f: round(b / orders, 1) for f, b in by_family.items()},
    }
    if rate:
        result["target_rate"] = rate
        result["feed_late_max_ms"] = round(m.feed["feed_late_max_ms"], 1)
    if sampler:
        result["timeline"] = sampler.summary()
    return result


def default_name(latency_ms: int, rate: int) -> str:
    """pipeline, pipeline_latency200, pipeline_rate5000, pipeline_latency200_rate2500."""
    name = "pipeline"
    if latency_ms:
        name += f"_latency{latency_ms}"
    if rate:
        name += f"_rate{rate}"
    return name


def main() -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=200_000)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--latency-ms", type=int, default=0, help="simulated gateway latency")
    parser.add_argument("--rate", type=int, default=0, help="orders/s to feed (0: one flood)")
    parser.add_argument("--chunk-ms", type=int, default=50, help="feeding interval with --rate")
    parser.add_argument("--name", default=None, help="results/<name>.json (default from options)")
    parser.add_argument("--output", type=Path, default=None, help="write the JSON here instead")
    add_server_config_option(parser)
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set a variable for the consumers (repeatable), e.g. STREAMPROC_BATCH_SIZE=500",
    )
    parser.add_argument(
        "--timeline",
        action="store_true",
        help="sample CPU, the server's waits for a core and each stage's backlog every 0.25 s",
    )
    args = parser.parse_args()
    config = server_config_of(args)
    extra_env = dict(item.split("=", 1) for item in args.env)
    result = {
        "benchmark": "pipeline",
        "machine": machine(),
        "result": run(
            args.orders,
            args.procs,
            args.latency_ms,
            args.rate,
            args.chunk_ms,
            extra_env=extra_env,
            server_config=config,
            timeline=args.timeline,
        ),
    }
    save(args.name or default_name(args.latency_ms, args.rate), result, args.output)


if __name__ == "__main__":
    main()
