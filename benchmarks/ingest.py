"""Ingest benchmark: rows/s and peak RSS of `streamproc ingest` on generated CSVs.

    python -m benchmarks.ingest [--rows 1000000 5000000] [--quick] [--appendfsync everysec]

For each size: write a seeded CSV of exactly ROWS rows (benchmarks/generate.py, about 20% of the
orders multi-line) to a temporary directory, start a fresh private server (AOF on, see
benchmarks/common.py), run `python -m streamproc ingest FILE --json` as a child process with no
consumers running, and measure:

- wall time from spawning the child to reaping it (interpreter start-up and the UTF-8 pre-check
  included), and the `seconds` the command reports for itself;
- the child's peak RSS, from os.wait4's rusage for that one child (exact per child, unlike
  RUSAGE_CHILDREN, which is the maximum over every child reaped so far);
- the CPU seconds of the child (rusage), of the server and of its AOF rewrites (/proc) during
  the import, which show which side limits the rate;
- that every order is in the reserve stream: XLEN == imported == the generated orders.

The generated files are deleted afterwards. Results go to benchmarks/results/ingest.json (or
--name); a summary table is printed last. `--quick` runs one tiny size (a smoke test).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis

from benchmarks.common import (
    add_server_config_option,
    cli_env,
    machine,
    private_server,
    process_cpu_seconds,
    save,
    server_config_of,
)
from benchmarks.generate import write_rows
from streamproc.keys import Keys

DEFAULT_ROWS = [1_000_000, 5_000_000]
QUICK_ROWS = [2_000]


@dataclass(frozen=True, slots=True)
class ChildRun:
    """One reaped child: exit code, wall seconds, peak resident set size and CPU seconds."""

    returncode: int
    wall_seconds: float
    max_rss_bytes: int
    cpu_seconds: float = 0.0  # user + system; 0.0 where not measured (a sampled run)


@dataclass(frozen=True, slots=True)
class SizeResult:
    """The figures for one file size."""

    rows: int
    orders: int
    file_bytes: int
    generate_seconds: float
    exit_code: int
    wall_seconds: float
    rows_per_s: float
    orders_per_s: float
    reported_seconds: float
    reported_rows_per_s: float
    peak_rss_bytes: int
    peak_rss_mib: float
    imported: int
    rejected: int
    duplicates: int
    reserve_xlen: int
    xlen_check: bool
    redis_used_memory_bytes: int
    redis_bytes_per_order: float
    aof_bytes: int
    cpu_seconds: dict[str, float]
    cpu_us_per_row: dict[str, float]


def max_rss_bytes(ru_maxrss: int) -> int:
    """ru_maxrss in bytes: Linux reports KiB, macOS bytes."""
    return ru_maxrss if sys.platform == "darwin" else ru_maxrss * 1024


def run_child(argv: list[str], env: dict[str, str], stdout: Path, stderr: Path) -> ChildRun:
    """Run argv to completion; wall time and the peak RSS of exactly this child."""
    with stdout.open("wb") as out, stderr.open("wb") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen.wait
    cpu = usage.ru_utime + usage.ru_stime
    return ChildRun(proc.returncode, wall, max_rss_bytes(usage.ru_maxrss), cpu)


def generate(path: Path, rows: int, seed: int) -> tuple[int, float]:
    """Write the CSV; returns (orders, seconds taken)."""
    started = time.perf_counter()
    with path.open("w", newline="", encoding="utf-8") as handle:
        orders = write_rows(handle, rows, seed=seed)
    return orders, time.perf_counter() - started


def durability(client: redis.Redis) -> dict[str, str]:
    """The server's persistence settings during the run."""
    config = client.config_get("append*")
    return {"appendonly": str(config["appendonly"]), "appendfsync": str(config["appendfsync"])}


def measure_size(
    rows: int,
    seed: int,
    appendfsync: str,
    batch_size: int,
    server_config: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Generate, ingest and check one size on a fresh server; the generated file is deleted.

    `server_config` is applied with CONFIG SET before the import (default: none)."""
    work = Path(tempfile.mkdtemp(prefix="sp-ingest-"))
    try:
        csv_path = work / "orders.csv"
        orders, gen_seconds = generate(csv_path, rows, seed)
        with private_server(appendfsync) as url:
            client = redis.Redis.from_url(url)
            for name, value in (server_config or {}).items():
                client.config_set(name, value)
            conditions = durability(client)
            server_pid = int(client.info("server")["process_id"])
            server_cpu = process_cpu_seconds(server_pid)
            rewrites_cpu = process_cpu_seconds(server_pid, children=True)
            argv = [sys.executable, "-m", "streamproc", "ingest", str(csv_path), "--json"]
            argv += ["--batch-size", str(batch_size)]
            child = run_child(argv, cli_env(url, work / "home"), work / "out", work / "err")
            if child.returncode != 0:
                err = (work / "err").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"ingest exited {child.returncode}: {err}")
            # Read at once: the server's CPU for the import, before the checks below add to it.
            cpu = {
                "ingest": round(child.cpu_seconds, 2),
                "server": round(process_cpu_seconds(server_pid) - server_cpu, 2),
                "server_aof_rewrites": round(
                    process_cpu_seconds(server_pid, children=True) - rewrites_cpu, 2
                ),
            }
            report = json.loads((work / "out").read_text())
            xlen = int(client.xlen(Keys().stream("reserve")))
            memory = int(client.info("memory")["used_memory"])
            aof = int(client.info("persistence").get("aof_current_size", 0))
        result = SizeResult(
            rows=rows,
            orders=orders,
            file_bytes=csv_path.stat().st_size,
            generate_seconds=round(gen_seconds, 2),
            exit_code=child.returncode,
            wall_seconds=round(child.wall_seconds, 3),
            rows_per_s=round(rows / child.wall_seconds, 1),
            orders_per_s=round(orders / child.wall_seconds, 1),
            reported_seconds=float(report["seconds"]),
            reported_rows_per_s=float(report["rows_per_s"]),
            peak_rss_bytes=child.max_rss_bytes,
            peak_rss_mib=round(child.max_rss_bytes / 2**20, 1),
            imported=int(report["imported"]),
            rejected=int(report["rejected"]),
            duplicates=int(report["duplicates"]),
            reserve_xlen=xlen,
            xlen_check=xlen == int(report["imported"]) == orders and int(report["rows"]) == rows,
            redis_used_memory_bytes=memory,
            redis_bytes_per_order=round(memory / orders, 1),
            aof_bytes=aof,
            cpu_seconds=cpu,
            cpu_us_per_row={name: round(value / rows * 1e6, 2) for name, value in cpu.items()},
        )
        return {**asdict(result), "durable": conditions, "server_config": server_config or {}}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(
    sizes: list[int],
    seed: int = 7,
    appendfsync: str = "everysec",
    batch_size: int = 500,
    server_config: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Every size, one after the other, each on its own fresh server."""
    return [measure_size(rows, seed, appendfsync, batch_size, server_config) for rows in sizes]


def table(results: list[dict[str, Any]]) -> str:
    """A plain-text summary, one line per size."""
    head = (
        f"{'rows':>10} {'orders':>10} {'wall s':>9} {'rows/s':>10} {'own rows/s':>11} "
        f"{'peak RSS MiB':>13} {'XLEN ok':>8} {'redis B/order':>14}  durable"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        durable = f"appendonly={r['durable']['appendonly']} fsync={r['durable']['appendfsync']}"
        lines.append(
            f"{r['rows']:>10,} {r['orders']:>10,} {r['wall_seconds']:>9.2f} "
            f"{r['rows_per_s']:>10,.0f} {r['reported_rows_per_s']:>11,.0f} "
            f"{r['peak_rss_mib']:>13.1f} {'yes' if r['xlen_check'] else 'NO':>8} "
            f"{r['redis_bytes_per_order']:>14,.0f}  {durable}"
        )
    return "\n".join(lines)


def main() -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=DEFAULT_ROWS)
    parser.add_argument("--quick", action="store_true", help=f"one tiny size ({QUICK_ROWS[0]})")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--appendfsync", choices=["always", "everysec", "no"], default="everysec")
    parser.add_argument("--batch-size", type=int, default=500, help="ingest --batch-size")
    parser.add_argument("--name", default="ingest", help="results/NAME.json")
    parser.add_argument("--output", type=Path, help="JSON file instead of results/NAME.json")
    add_server_config_option(parser)
    args = parser.parse_args()
    sizes = QUICK_ROWS if args.quick else args.rows
    config = server_config_of(args)
    results = measure(sizes, args.seed, args.appendfsync, args.batch_size, config)
    save(args.name, {"benchmark": "ingest", "machine": machine(), "results": results}, args.output)
    print()
    print(table(results))
    if not all(r["xlen_check"] for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
