"""HTTP API benchmark: req/s and latency of GET /api/stats and GET /api/orders/{id}, one worker.

    python -m benchmarks.api [--orders 20000] [--duration-s 10] [--connections 32] [--rate 1000]
                             [--hey-workers 10] [--output PATH]
    python -m benchmarks.api --quick          # a few hundred orders, one second per phase

Needs `wrk` and `hey` on PATH (Debian: `apt-get install wrk hey`); exits 2 naming what is missing.

Starts a private server, ingests a seeded CSV and runs `streamproc consume --stage all` until it is
drained (so orders have full timelines and payments), stops the consumers, then starts
`streamproc api --workers 1` on a free loopback port, twice: with STREAMPROC_LOG_LEVEL=warning and
with the default info logging (one log line per request, to a file). Against each it measures:

- max throughput: `wrk -t1 -cC` (one load thread, leaving the other core to the server), after a
  discarded warm-up; for the order endpoint a Lua script picks a random seeded id per request;
- fixed rate: `hey -c W -q RATE/W -o csv` (hey's -q is per worker); p50/p99/max are computed here
  from every request's latency. hey cannot vary the URL, so it asks for one fixed completed order.

Every phase also records the CPU used by the API process, Redis, the load generator and everything
else on the machine. Results go to benchmarks/results/api.json; a summary table is printed last.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import redis

from benchmarks.common import (
    free_port,
    machine,
    pipeline_env,
    private_server,
    save,
    server_cpu_seconds,
)
from benchmarks.generate import write_orders
from streamproc.keys import Keys
from streamproc.status import collect_status

REPO = Path(__file__).resolve().parent.parent
TOOLS = ("wrk", "hey")
INSTALL_HINT = "apt-get install wrk hey"
SEED = 7  # benchmarks.generate's default: order ids are ORD-7-0 … ORD-7-<orders-1>
TARGET_REQ_PER_S = 5_000
TARGET_P99_MS_AT_RATE = 10.0
READY_TIMEOUT_S = 30.0
WRK_MARK = "WRK_JSON "
STATS_PATH = "/api/stats"
ORDER_TEMPLATE = "/api/orders/{order_id}"
CLK_TCK = os.sysconf("SC_CLK_TCK")
LOG_LEVELS = ("warning", "info")  # info = the default: STREAMPROC_LOG_LEVEL unset
CONTENDED_OTHER_PCT = 15.0  # CPU (% of one core) used by others that makes a figure suspect

# wrk's done() hook prints its own exact figures (latencies in microseconds) as one JSON line.
WRK_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests":%d,"duration_us":%d,"bytes":%d,"non_2xx_3xx":%d,'
    .. '"connect":%d,"read":%d,"write":%d,"timeout":%d,'
    .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\\n',
    "%MARK%", summary.requests, summary.duration, summary.bytes, e.status,
    e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
"""
WRK_RANDOM_ORDER = """
math.randomseed(%SEED%)
request = function()
  return wrk.format(nil, "/api/orders/ORD-%SEED%-" .. math.random(0, %LAST%))
end
"""


@dataclass(frozen=True)
class Config:
    """Sizes of one benchmark run."""

    orders: int
    duration_s: int
    warmup_s: int
    connections: int
    rate: int
    hey_workers: int
    quick: bool


@dataclass(frozen=True)
class Api:
    """A running `streamproc api` process."""

    pid: int
    base_url: str
    log_path: Path


# ---------------------------------------------------------------------------------------- setup


def missing_tools() -> list[str]:
    """The load generators that are not on PATH."""
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def seed(url: str, env: dict[str, str], work: Path, orders: int) -> dict[str, Any]:
    """Ingest a generated CSV and process it to the end; the consumers are stopped afterwards."""
    csv_path = work / "orders.csv"
    with csv_path.open("w", newline="") as handle:
        rows = write_orders(handle, orders, seed=SEED)
    cli = [sys.executable, "-m", "streamproc"]
    started = time.perf_counter()
    consumers = [
        subprocess.Popen([*cli, "consume", "--stage", "all"], env=env, stdout=subprocess.DEVNULL)
        for _ in range(2)
    ]
    try:
        for step in (["ingest", str(csv_path)], ["wait", "--timeout", "3600"]):
            subprocess.run([*cli, *step], env=env, check=True, stdout=subprocess.DEVNULL)
    finally:
        for proc in consumers:
            proc.terminate()
        for proc in consumers:
            proc.wait(30)
    with redis.Redis.from_url(url) as client:
        return {
            "orders": orders,
            "rows": rows,
            "seconds": round(time.perf_counter() - started, 1),
            "orders_by_state": collect_status(client, Keys()).orders,
            "redis_used_memory_bytes": int(client.info("memory")["used_memory"]),
        }


def http_get(url: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
    """Status and body of one GET (any status, no exception for 4xx/5xx)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as reply:  # noqa: S310 (our loopback)
            return int(reply.status), reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_ready(proc: subprocess.Popen[bytes], base_url: str, log_path: Path) -> None:
    """Poll /openapi.json until the server answers; fail with its log if it exits or stalls."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"api exited {proc.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            if http_get(f"{base_url}/openapi.json", 1.0)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"api not ready after {READY_TIMEOUT_S} s:\n{log_path.read_text()[-4000:]}")


def api_command(port: int) -> list[str]:
    """How the API is started (the same for both log levels)."""
    return [
        *(sys.executable, "-m", "streamproc", "api"),
        *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
    ]


@contextmanager
def running_api(env: dict[str, str], log_level: str, log_path: Path) -> Iterator[Api]:
    """`streamproc api --workers 1` on a free loopback port, stderr to `log_path`."""
    env = dict(env)
    if log_level == "info":
        env.pop("STREAMPROC_LOG_LEVEL", None)  # the default
    else:
        env["STREAMPROC_LOG_LEVEL"] = log_level
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(api_command(port), env=env, stdout=log, stderr=log)
        try:
            wait_ready(proc, base_url, log_path)
            yield Api(proc.pid, base_url, log_path)
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def pick_order_id(base_url: str, orders: int) -> str:
    """The first seeded order that completed (full timeline and a charge), for hey's fixed URL."""
    for n in range(min(orders, 1000)):
        order_id = f"ORD-{SEED}-{n}"
        status, body = http_get(base_url + ORDER_TEMPLATE.format(order_id=order_id))
        if status == 200 and json.loads(body).get("data", {}).get("status") == "completed":
            return order_id
    raise RuntimeError("no completed order among the first 1000 seeded ids")


# ------------------------------------------------------------------------------------ CPU meter


def _machine_busy_s() -> float:
    """CPU seconds spent busy by the whole machine (all cores) since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def _process_cpu_s(pid: int) -> float:
    """utime + stime of one process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _own_cpu_s() -> tuple[float, float]:
    """(this script, its waited-for children: the load generators) CPU seconds."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


@dataclass(frozen=True)
class CpuSample:
    """CPU counters at one instant."""

    wall: float
    machine_s: float
    api_s: float
    redis_s: float
    me_s: float
    loadgen_s: float

    @classmethod
    def take(cls, api_pid: int, client: redis.Redis) -> CpuSample:
        """Read every counter now."""
        me, kids = _own_cpu_s()
        return cls(
            time.perf_counter(),
            _machine_busy_s(),
            _process_cpu_s(api_pid),
            server_cpu_seconds(client),
            me,
            kids,
        )


def cpu_split(before: CpuSample, after: CpuSample) -> dict[str, float]:
    """Percent of one core used by each party between two samples (2 cores = 200 %)."""
    wall = after.wall - before.wall

    def pct(seconds: float) -> float:
        return round(100 * seconds / wall, 1)

    api, red = after.api_s - before.api_s, after.redis_s - before.redis_s
    loadgen, me = after.loadgen_s - before.loadgen_s, after.me_s - before.me_s
    machine_s = after.machine_s - before.machine_s
    return {
        "api_pct": pct(api),
        "redis_pct": pct(red),
        "load_generator_pct": pct(loadgen),
        "other_pct": pct(max(0.0, machine_s - api - red - loadgen - me)),
        "machine_pct": pct(machine_s),
    }


# ----------------------------------------------------------------------------------------- load


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values (q in 0..1)."""
    if not ordered:
        return 0.0
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def wrk_script(work: Path, orders: int | None) -> Path:
    """The wrk Lua script: the done() report, plus a random seeded order id per request."""
    text = WRK_DONE.replace("%MARK%", WRK_MARK)
    if orders is not None:
        text = WRK_RANDOM_ORDER.replace("%SEED%", str(SEED)).replace("%LAST%", str(orders - 1))
        text += WRK_DONE.replace("%MARK%", WRK_MARK)
    path = work / ("wrk_orders.lua" if orders is not None else "wrk_report.lua")
    path.write_text(text)
    return path


def wrk_command(url: str, script: Path, connections: int, seconds: int) -> list[str]:
    """One wrk run: one thread, `connections` keep-alive connections."""
    return [
        *("wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"),
        *("-s", str(script), url),
    ]


def parse_wrk(stdout: str) -> dict[str, Any]:
    """Figures from the done() line wrk printed."""
    line = next(x for x in stdout.splitlines() if x.startswith(WRK_MARK))
    raw = json.loads(line[len(WRK_MARK) :])
    requests = int(raw["requests"])
    seconds = raw["duration_us"] / 1e6
    return {
        "requests": requests,
        "seconds": round(seconds, 3),
        "requests_per_s": round(requests / seconds, 1),
        "latency_ms": {
            k: round(raw[f"{k}_us"] / 1000, 3) for k in ("p50", "p90", "p99", "max", "mean")
        },
        "bytes_per_response": round(raw["bytes"] / requests) if requests else 0,
        "errors": {k: int(raw[k]) for k in ("non_2xx_3xx", "connect", "read", "write", "timeout")},
    }


def warm_up(url: str, script: Path, cfg: Config) -> None:
    """A discarded wrk run (fills the Redis pool, warms caches); not part of any figure."""
    command = wrk_command(url, script, cfg.connections, cfg.warmup_s)
    subprocess.run(command, check=True, capture_output=True)


def run_wrk(url: str, script: Path, cfg: Config) -> dict[str, Any]:
    """The measured wrk run."""
    command = wrk_command(url, script, cfg.connections, cfg.duration_s)
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return {"tool": "wrk", "command": " ".join(command), **parse_wrk(done.stdout)}


def hey_command(url: str, cfg: Config) -> list[str]:
    """hey at cfg.rate req/s in total: -q is per worker."""
    per_worker = cfg.rate / cfg.hey_workers
    return [
        *("hey", "-z", f"{cfg.duration_s}s", "-c", str(cfg.hey_workers)),
        *("-q", f"{per_worker:g}", "-o", "csv", url),
    ]


def parse_hey(stdout: str, cfg: Config) -> dict[str, Any]:
    """Latency distribution and achieved rate from hey's per-request CSV (0.1 ms resolution)."""
    rows = list(csv.DictReader(io.StringIO(stdout)))
    latencies = sorted(float(row["response-time"]) * 1000 for row in rows)
    non_2xx = sum(1 for row in rows if not row["status-code"].startswith("2"))
    return {
        "target_requests_per_s": cfg.rate,
        "requests": len(rows),
        "achieved_requests_per_s": round(len(rows) / cfg.duration_s, 1),
        "latency_ms": {
            "p50": round(percentile(latencies, 0.50), 3),
            "p90": round(percentile(latencies, 0.90), 3),
            "p99": round(percentile(latencies, 0.99), 3),
            "max": round(latencies[-1], 3) if latencies else 0.0,
            "mean": round(sum(latencies) / len(latencies), 3) if latencies else 0.0,
        },
        "errors": {"non_2xx": non_2xx},
    }


def run_hey(url: str, cfg: Config) -> dict[str, Any]:
    """One fixed-rate hey run."""
    command = hey_command(url, cfg)
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return {"tool": "hey", "command": " ".join(command), **parse_hey(done.stdout, cfg)}


# --------------------------------------------------------------------------------------- phases


def log_lines(path: Path) -> int:
    """Lines the API has logged so far."""
    with path.open("rb") as handle:
        return sum(1 for _ in handle)


def measured(
    api: Api, client: redis.Redis, phase: Callable[..., dict[str, Any]], *args: Any
) -> dict[str, Any]:
    """Run one load phase and attach the CPU split, load average and log lines it caused."""
    load_1m = round(os.getloadavg()[0], 2)
    lines = log_lines(api.log_path)
    before = CpuSample.take(api.pid, client)
    result = phase(*args)
    after = CpuSample.take(api.pid, client)
    result["cpu"] = cpu_split(before, after)
    if result["requests"]:
        # The API's own CPU per answer: what one free core could serve, whatever else runs.
        per_request_us = (after.api_s - before.api_s) * 1e6 / result["requests"]
        result["api_cpu_us_per_request"] = round(per_request_us, 1)
        result["one_core_capacity_req_per_s"] = round(1e6 / per_request_us) if per_request_us else 0
    result["loadavg_1m_before"] = load_1m
    result["api_log_lines"] = log_lines(api.log_path) - lines
    return result


def run_level(
    env: dict[str, str], url: str, cfg: Config, work: Path, log_level: str
) -> dict[str, Any]:
    """All four phases against one API process at one log level."""
    log_path = work / f"api-{log_level}.log"
    with redis.Redis.from_url(url) as client, running_api(env, log_level, log_path) as api:
        order_id = pick_order_id(api.base_url, cfg.orders)
        stats_url = api.base_url + STATS_PATH
        orders_url = api.base_url + "/api/orders/"  # the Lua script appends a random id
        order_url = api.base_url + ORDER_TEMPLATE.format(order_id=order_id)
        report, random_orders = wrk_script(work, None), wrk_script(work, cfg.orders)
        phases = {}
        warm_up(stats_url, report, cfg)
        phases["stats_max"] = measured(api, client, run_wrk, stats_url, report, cfg)
        warm_up(orders_url, random_orders, cfg)
        phases["order_max"] = measured(api, client, run_wrk, orders_url, random_orders, cfg)
        phases["stats_rate"] = measured(api, client, run_hey, stats_url, cfg)
        phases["order_rate"] = measured(api, client, run_hey, order_url, cfg)
    phases["order_max"]["url"] = (
        f"{api.base_url}/api/orders/ORD-{SEED}-<random 0..{cfg.orders - 1}>"
    )
    phases["order_rate"]["fixed_order_id"] = order_id
    if log_level == "info":
        log_level = "info (default: STREAMPROC_LOG_LEVEL unset)"
    return {
        "log_level": log_level,
        "api_command": " ".join(api_command(0)).replace("--port 0", "--port <free port>"),
        "phases": phases,
    }


def errors_of(result: dict[str, Any]) -> list[str]:
    """Phases that saw a non-2xx answer or a socket error."""
    bad = []
    for level in result["runs"]:
        for name, phase in level["phases"].items():
            if any(phase["errors"].values()):
                bad.append(f"{level['log_level']} {name}: {phase['errors']}")
    return bad


def contended_of(result: dict[str, Any]) -> list[str]:
    """Phases during which processes outside the benchmark used a noticeable share of the CPU."""
    noisy = []
    for level in result["runs"]:
        for name, phase in level["phases"].items():
            other = phase["cpu"]["other_pct"]
            if other > CONTENDED_OTHER_PCT:
                noisy.append(f"{level['log_level'].split()[0]} {name}: other processes {other}%")
    return noisy


def versions() -> dict[str, str]:
    """Versions of what serves and what loads."""
    out = {}
    for package in (
        "streamproc",
        "starlette",
        "uvicorn",
        "uvloop",
        "httptools",
        "redis",
        "hiredis",
    ):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "not installed"
    for tool in TOOLS:
        out[tool] = _deb_version(tool)
    return out


def code_state() -> dict[str, Any]:
    """The commit measured and any uncommitted changes to the code that serves."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], check=False, capture_output=True, text=True, cwd=REPO)
        return done.stdout

    dirty = git("status", "--porcelain", "--", "api", "streamproc", "pyproject.toml")
    return {
        "commit": git("rev-parse", "HEAD").strip() or "unknown",
        "uncommitted": [line[3:] for line in dirty.splitlines() if line.strip()],
    }


def _deb_version(package: str) -> str:
    found = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", package],
        check=False,
        capture_output=True,
        text=True,
    )
    return found.stdout.strip() or "unknown"


def run(cfg: Config) -> dict[str, Any]:
    """Seed a private server, then benchmark the API at each log level."""
    work = Path(tempfile.mkdtemp(prefix="sp-api-bench-"))
    try:
        with private_server() as url:
            env = pipeline_env(url, work / "home")
            seeded = seed(url, env, work, cfg.orders)
            runs = [run_level(env, url, cfg, work, level) for level in LOG_LEVELS]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result: dict[str, Any] = {
        "benchmark": "api",
        "machine": machine(),
        "versions": versions(),
        "code": code_state(),
        "config": {**asdict(cfg), "wrk_threads": 1, "api_workers": 1},
        "targets": {
            "max_requests_per_s": TARGET_REQ_PER_S,
            "p99_ms_at_1000_req_per_s": TARGET_P99_MS_AT_RATE,
        },
        "seeded": seeded,
        "runs": runs,
        "notes": [
            "*_max: wrk, closed loop (each connection sends its next request when the last "
            "answers), so latency there is mostly queueing: about connections / throughput.",
            "order_max asks for a uniformly random seeded order per request (wrk Lua script); "
            "order_rate asks for one fixed completed order (hey cannot vary the URL).",
            "*_rate: hey, each worker paced at rate/workers req/s; latencies have 0.1 ms "
            "resolution (hey's CSV). hey starts every worker's ticker at the same instant, so "
            "requests arrive in bursts of hey_workers every hey_workers/rate s and the last of a "
            "burst waits for the others: with 10 workers p50/p99 are mostly that queue. "
            "--hey-workers 2 paces more evenly.",
            "cpu: percent of one core over the phase; machine_pct is all cores (200 = both busy); "
            "other_pct is CPU used by processes that are not part of the benchmark.",
            "api_cpu_us_per_request: the API process's CPU time per answered request; "
            "one_core_capacity_req_per_s = 1e6 / that, the rate one whole free core could serve.",
        ],
    }
    result["errors"] = errors_of(result)
    result["contended"] = contended_of(result)
    return result


# -------------------------------------------------------------------------------------- summary


def summary(result: dict[str, Any]) -> str:
    """The fixed table printed at the end."""
    cfg, seeded = result["config"], result["seeded"]
    lines = [
        f"API benchmark, 1 worker: {seeded['orders']:,} orders seeded; "
        f"wrk -t1 -c{cfg['connections']} {cfg['duration_s']}s; "
        f"hey {cfg['rate']:,} req/s {cfg['duration_s']}s",
        f"{'log level':<9} {'endpoint':<21} {'max req/s':>10} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'api cpu':>8} {'us/req':>7} | {'@rate p50':>9} {'p99':>6} {'max':>7}",
    ]
    for level in result["runs"]:
        name = level["log_level"].split()[0]
        for endpoint, key in (("GET /api/stats", "stats"), ("GET /api/orders/{id}", "order")):
            top, paced = level["phases"][f"{key}_max"], level["phases"][f"{key}_rate"]
            lines.append(
                f"{name:<9} {endpoint:<21} {top['requests_per_s']:>10,.0f} "
                f"{top['latency_ms']['p50']:>7.2f} {top['latency_ms']['p99']:>7.2f} "
                f"{top['cpu']['api_pct']:>7.0f}% {top.get('api_cpu_us_per_request', 0):>7.0f} | "
                f"{paced['latency_ms']['p50']:>9.2f} "
                f"{paced['latency_ms']['p99']:>6.2f} {paced['latency_ms']['max']:>7.2f}"
            )
    lines.append(_verdict(result))
    lines.extend(f"ERROR {e}" for e in result["errors"])
    if result["contended"]:
        lines.append("WARNING: the machine was not quiet; these figures understate the API:")
        lines.extend(f"  {c}" for c in result["contended"])
    return "\n".join(lines)


def _verdict(result: dict[str, Any]) -> str:
    """Targets at warning level: >= 5,000 req/s; p99 < 10 ms at the fixed rate."""
    phases = result["runs"][0]["phases"]
    slowest = min(phases[k]["requests_per_s"] for k in ("stats_max", "order_max"))
    worst_p99 = max(phases[k]["latency_ms"]["p99"] for k in ("stats_rate", "order_rate"))
    throughput = "met" if slowest >= TARGET_REQ_PER_S else "NOT met"
    latency = "met" if worst_p99 < TARGET_P99_MS_AT_RATE else "NOT met"
    return (
        f"targets (warning level): >= {TARGET_REQ_PER_S:,} req/s {throughput} "
        f"(lowest {slowest:,.0f}); p99 < {TARGET_P99_MS_AT_RATE:g} ms at "
        f"{result['config']['rate']:,} req/s {latency} (highest {worst_p99:.2f} ms)"
    )


# ------------------------------------------------------------------------------------------ CLI


def config(args: argparse.Namespace) -> Config:
    """Options, with --quick's small defaults for whatever was not given."""
    quick = {"orders": 300, "duration_s": 1, "connections": 8, "rate": 200}
    full = {"orders": 20_000, "duration_s": 10, "connections": 32, "rate": 1_000}
    base = quick if args.quick else full
    pick = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in base.items()}
    return Config(
        orders=pick["orders"],
        duration_s=pick["duration_s"],
        warmup_s=1 if args.quick else 2,
        connections=pick["connections"],
        rate=pick["rate"],
        hey_workers=max(1, min(args.hey_workers, pick["rate"])),
        quick=args.quick,
    )


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, help="orders to seed (20000; quick 300)")
    parser.add_argument("--duration-s", type=int, help="seconds per phase (10; quick 1)")
    parser.add_argument("--connections", type=int, help="wrk connections (32; quick 8)")
    parser.add_argument("--rate", type=int, help="hey's total req/s (1000; quick 200)")
    parser.add_argument(
        "--hey-workers", type=int, default=10, help="hey -c; each asks for rate/workers req/s"
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for the smoke test")
    parser.add_argument("--output", type=Path, help="JSON file (default results/api.json)")
    args = parser.parse_args(argv)
    missing = missing_tools()
    if missing:
        print(
            f"benchmarks.api needs {' and '.join(missing)} on PATH; install: {INSTALL_HINT}",
            file=sys.stderr,
        )
        sys.exit(2)
    result = run(config(args))
    save("api", result, args.output)
    print()
    print(summary(result))
    if result["errors"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
