"""End-to-end pipeline benchmark: orders/s and ingest→terminal latency.

    python -m benchmarks.pipeline [--orders 20000] [--procs 2] [--latency-ms 0]

Starts a private server, generates a seeded CSV, runs PROCS `streamproc consume --stage all`
processes, ingests, waits until drained, and reads latencies from each order's history.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

from benchmarks.common import machine, private_server, save
from benchmarks.generate import write_orders
from streamproc.export import iter_orders
from streamproc.keys import Keys
from streamproc.status import collect_status


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def _latencies_ms(client: redis.Redis, keys: Keys) -> list[float]:
    out = []
    for order in iter_orders(client, keys):
        steps = order.history.split(";")
        first, last = steps[0].split("@")[1], steps[-1].split("@")[1]
        start = time.mktime(time.strptime(first[:19], "%Y-%m-%dT%H:%M:%S")) + float(first[19:-1])
        end = time.mktime(time.strptime(last[:19], "%Y-%m-%dT%H:%M:%S")) + float(last[19:-1])
        out.append((end - start) * 1000)
    return out


def run(orders: int, procs: int, latency_ms: int) -> dict[str, object]:
    """One measured run."""
    work = Path(tempfile.mkdtemp(prefix="sp-pipe-"))
    csv_path = work / "orders.csv"
    with csv_path.open("w", newline="") as handle:
        rows = write_orders(handle, orders)
    with private_server() as url:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMPROC_")}
        env.update(
            STREAMPROC_REDIS_URL=url,
            STREAMPROC_HOME=str(work / "home"),
            STREAMPROC_PAYMENT_LATENCY_MS=str(latency_ms),
            STREAMPROC_DEFAULT_STOCK="10000000",
            STREAMPROC_LOG_LEVEL="WARNING",
        )
        cli = [sys.executable, "-m", "streamproc"]
        consumers = [
            subprocess.Popen([*cli, "consume", "--stage", "all"], env=env) for _ in range(procs)
        ]
        try:
            time.sleep(1.5)  # let the consumers start before the clock does
            started = time.perf_counter()
            subprocess.run(
                [*cli, "ingest", str(csv_path), "--json"],
                env=env,
                check=True,
                stdout=subprocess.DEVNULL,
            )
            ingested = time.perf_counter() - started
            subprocess.run(
                [*cli, "wait", "--timeout", "3600"], env=env, check=True, stdout=subprocess.DEVNULL
            )
            elapsed = time.perf_counter() - started
        finally:
            for proc in consumers:
                proc.terminate()
            for proc in consumers:
                proc.wait(30)
        client = redis.Redis.from_url(url)
        keys = Keys()
        status = collect_status(client, keys)
        latencies = _latencies_ms(client, keys)
        memory = int(client.info("memory")["used_memory"])
    return {
        "orders": orders,
        "rows": rows,
        "consumer_processes": procs,
        "gateway_latency_ms": latency_ms,
        "ingest_seconds": round(ingested, 3),
        "total_seconds": round(elapsed, 3),
        "orders_per_s": round(orders / elapsed, 1),
        "latency_p50_ms": round(_percentile(latencies, 0.5), 1),
        "latency_p99_ms": round(_percentile(latencies, 0.99), 1),
        "orders_by_state": status.orders,
        "redis_used_memory_bytes": memory,
        "redis_bytes_per_order": round(memory / orders, 1),
    }


def main() -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=20_000)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--latency-ms", type=int, default=0)
    parser.add_argument("--name", default="pipeline")
    args = parser.parse_args()
    result = {
        "benchmark": "pipeline",
        "machine": machine(),
        "result": run(args.orders, args.procs, args.latency_ms),
    }
    save(args.name, result)


if __name__ == "__main__":
    main()
