"""AOF benchmark: what the server writes to its append-only file per order, by command and key.

    python -m benchmarks.aof [--orders 20000] [--quick]

Runs ORDERS seeded orders through the whole pipeline (2 `consume --stage all`, one ingest) on a
private server with AOF on and automatic rewrites off, so the file keeps every write, then reads
the AOF back and sums, per order: the bytes and the commands, by command name and by command and
key family (digits in a key replaced by #, so every order hash is one family). Writes made inside
a script are written one by one, wrapped in MULTI/EXEC; a stage's XREADGROUP is written as one
XCLAIM per entry it delivers. Each command written costs the server's main thread about a
microsecond besides the command itself (a Lua loop of XADDs: 1.0 µs each with AOF off, 1.9-2.2
with it on), so this table is where the AOF's share of the server's time per order comes from.
Results go to benchmarks/results/aof.json.
"""

from __future__ import annotations

import argparse
import re
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import redis

from benchmarks.common import machine, pipeline_env, private_server, save
from benchmarks.generate import write_orders
from benchmarks.pipeline import _drive

QUICK_ORDERS = 300
TOP = 30
_DIGITS = re.compile(r"\d+")


def resp_commands(data: bytes) -> list[list[bytes]]:
    """The commands of an AOF's RESP text (each a list of its arguments)."""
    commands: list[list[bytes]] = []
    at = 0
    while at < len(data):
        if data[at : at + 1] != b"*":
            raise ValueError(f"not a RESP array at byte {at}: {data[at : at + 20]!r}")
        end = data.index(b"\r\n", at)
        argc, at = int(data[at + 1 : end]), end + 2
        args = []
        for _ in range(argc):
            end = data.index(b"\r\n", at)
            size, at = int(data[at + 1 : end]), end + 2
            args.append(data[at : at + size])
            at += size + 2
        commands.append(args)
    return commands


def family(command: list[bytes]) -> str:
    """`NAME key-family` of a command (MULTI and EXEC have no key)."""
    name = command[0].decode().upper()
    if len(command) < 2 or name in ("MULTI", "EXEC", "SELECT"):
        return name
    return f"{name} {_DIGITS.sub('#', command[1].decode(errors='replace'))}"


def tally(commands: list[list[bytes]], orders: int) -> dict[str, Any]:
    """Bytes and commands per order, by command and by command and key family."""
    sizes: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    by_name: Counter[str] = Counter()
    names: Counter[str] = Counter()
    total = 0
    for command in commands:
        # The command's RESP size: its header, and each argument's header, text and CRLF.
        size = len(f"*{len(command)}\r\n") + sum(
            len(f"${len(a)}\r\n") + len(a) + 2 for a in command
        )
        key = family(command)
        sizes[key] += size
        counts[key] += 1
        by_name[key.split(" ", 1)[0]] += size
        names[key.split(" ", 1)[0]] += 1
        total += size
    return {
        "bytes_per_order": round(total / orders, 1),
        "commands_per_order": round(len(commands) / orders, 2),
        "by_command": {
            name: {
                "commands_per_order": round(names[name] / orders, 3),
                "bytes_per_order": round(size / orders, 1),
            }
            for name, size in by_name.most_common()
        },
        "by_family": {
            key: {
                "commands_per_order": round(counts[key] / orders, 3),
                "bytes_per_order": round(size / orders, 1),
            }
            for key, size in sizes.most_common(TOP)
        },
    }


def incr_files(client: redis.Redis) -> list[Path]:
    """The AOF's incremental files, oldest first (rewrites are off: there is one)."""
    server_dir = Path(str(client.config_get("dir")["dir"]))
    aof_dir = server_dir / str(client.config_get("appenddirname")["appenddirname"])
    return sorted(aof_dir.glob("*.incr.aof"), key=lambda p: int(p.name.split(".")[-3]))


def run(orders: int, procs: int = 2, seed: int = 7) -> dict[str, Any]:
    """Drive ORDERS orders through the pipeline (benchmarks.pipeline's drive) and tally what the
    AOF got from the ingest on."""
    with tempfile.TemporaryDirectory(prefix="sp-aof-") as tmp, private_server() as url:
        work = Path(tmp)
        client = redis.Redis.from_url(url)
        client.config_set("auto-aof-rewrite-percentage", 0)
        csv_path = work / "orders.csv"
        with csv_path.open("w", newline="") as handle:
            rows = write_orders(handle, orders, seed)
        start: list[int] = []

        def mark(_server: int, _consumers: list[int]) -> None:
            # The consumers are up and idle: the AOF ends at a command boundary.
            [path] = incr_files(client)
            start.append(path.stat().st_size)

        _drive(url, pipeline_env(url, work / "home"), procs, csv_path, [], 0.0, on_started=mark)
        [after] = incr_files(client)
        data = after.read_bytes()[start[0] :]
        client.close()
    return {
        "orders": orders,
        "rows": rows,
        "consumer_processes": procs,
        **tally(resp_commands(data), orders),
    }


def table(result: dict[str, Any]) -> str:
    """The per-family table, costliest first."""
    lines = [
        f"{result['orders']:,} orders: {result['bytes_per_order']:,} bytes and "
        f"{result['commands_per_order']} commands per order written to the AOF",
        f"{'command and key family':<62} {'cmds/order':>10} {'bytes/order':>11}",
    ]
    for key, row in result["by_family"].items():
        lines.append(f"{key[:62]:<62} {row['commands_per_order']:>10} {row['bytes_per_order']:>11}")
    return "\n".join(lines)


def main() -> None:
    """Command line: run, save results/aof.json, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ORDERS} orders")
    parser.add_argument("--procs", type=int, default=2, help="consumer processes")
    parser.add_argument("--output", type=Path, default=None, help="write the JSON here instead")
    args = parser.parse_args()
    orders = QUICK_ORDERS if args.quick else args.orders
    result = {"benchmark": "aof", "machine": machine(), "result": run(orders, args.procs)}
    save("aof", result, args.output)
    print(table(result["result"]))


if __name__ == "__main__":
    main()
