"""Server CPU per order, per stage and per Lua script: where the server's time goes.

    python -m benchmarks.scripts [--orders 20000] [--procs 2] [--threshold-us 10] [--no-reference]

Runs the real pipeline one stage at a time on a private server (AOF on, as the other
benchmarks): `streamproc ingest` of a seeded CSV, then PROCS `streamproc consume --stage X`
processes for reserve, payment, notify and snapshot in turn, each until its group has nothing
pending or undelivered, so the server's work is measured stage by stage (finalize and rollback
only drain what earlier versions left: the payment stage settles the orders it charges):

- timing run: around each stage, the server's CPU (INFO cpu, user + sys, all its threads; AOF
  rewrites run in children and are counted apart), INFO commandstats (EVAL + EVALSHA calls and
  µs) and the slow log at --threshold-us, which every batched script call exceeds and the
  commands inside scripts do not: each logged call is named (by its digest) and timed by the
  server. Script calls under the threshold are reported as unattributed.
- call-log run: the same, on a fresh server, with the slow log at 0: every command is logged,
  those the scripts run included, so each script's redis.call()s are counted by name and timed,
  and the stages' plain (client-sent) commands too. Logging slows the scripts (~0.8 µs per
  command they run), so this run's CPU and script durations are not reported.

Per script: calls, items per call (orders, records or ids, from the call's arguments), µs per
call and per order, and per item the commands it ran; "Lua" is the script's time less those
commands' (the interpreter, cjson, string building, and converting each redis.call()'s
arguments and reply). Then the whole pipeline is run at once (benchmarks.pipeline, unless
--no-reference), for the server CPU per order that the sum of the stages is compared with.
Results go to benchmarks/results/scripts.json.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from benchmarks.common import machine, pipeline_env, private_server, save, server_cpu_split
from benchmarks.generate import write_orders
from benchmarks.slowlog import (
    BENCH_CLIENT,
    PER_MESSAGE,
    SCRIPT_COMMANDS,
    Figures,
    Profile,
    SlowLog,
)
from streamproc.keys import Keys
from streamproc.lua import script_names, script_source
from streamproc.workflow import FACTS_STAGE

STAGES = ("ingest", "reserve", "payment", "notify", "snapshot")
CLI = [sys.executable, "-m", "streamproc"]


def _drained(client: redis.Redis, stream: str, group: str) -> bool:
    """Every entry of the stream delivered to the group, and none pending."""
    info = client.xinfo_stream(stream)
    row = next(g for g in client.xinfo_groups(stream) if g["name"].decode() == group)
    return int(row["pending"]) == 0 and row["last-delivered-id"] == info["last-generated-id"]


@contextmanager
def _stage_done(
    stage: str, env: dict[str, str], procs: int, csv_path: Path, admin: redis.Redis
) -> Iterator[None]:
    """Run `stage` to its end (the whole import, or consumers until their group is drained),
    yield while the caller reads the figures, then stop the consumers."""
    if stage == "ingest":
        command = [*CLI, "ingest", str(csv_path), "--json"]
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
        yield
        return
    stream = Keys().sources(stage)[0]
    command = [*CLI, "consume", "--stage", stage]
    consumers = [subprocess.Popen(command, env=env) for _ in range(procs)]
    try:
        deadline = time.monotonic() + 600
        # The snapshot stage adds each registered file to the leaderboards after the acks.
        boards = Keys().leaderboard_pending if stage == FACTS_STAGE else None
        while not _drained(admin, stream, stage) or (boards and admin.exists(boards)):
            if time.monotonic() > deadline or any(p.poll() is not None for p in consumers):
                raise RuntimeError(f"stage {stage} did not drain")
            time.sleep(0.02)
        yield
    finally:
        for proc in consumers:
            proc.terminate()
        for proc in consumers:
            proc.wait(30)


def _one_run(
    work: Path, csv_path: Path, procs: int, threshold_us: int, poll: bool
) -> dict[str, dict[str, Any]]:
    """Every stage in turn on a fresh server; per stage its figures and slow-log profile."""
    home = work / f"home-{threshold_us}"
    out: dict[str, dict[str, Any]] = {}
    with private_server() as url:
        env = pipeline_env(url, home)
        admin = redis.Redis.from_url(url, client_name=BENCH_CLIENT)
        for name in script_names():
            # Loaded beforehand: a NOSCRIPT reply is logged like a call, and was never one.
            admin.script_load(script_source(name))
        log = SlowLog(url, threshold_us)
        try:
            for stage in STAGES:
                log.take()  # what the previous stage's shutdown logged is nobody's
                admin.config_resetstat()
                cpu, children = server_cpu_split(admin)
                started = time.perf_counter()
                if poll:
                    log.start()
                try:
                    with _stage_done(stage, env, procs, csv_path, admin):
                        seconds = time.perf_counter() - started
                        log.stop()
                        cpu_after, children_after = server_cpu_split(admin)
                        stats = admin.info("commandstats")
                        profile = log.take()
                        stream = Keys().sources("reserve" if stage == "ingest" else stage)[0]
                        messages = int(admin.xinfo_stream(stream)["entries-added"])
                        for name in PER_MESSAGE & profile.scripts.keys():
                            profile.scripts[name].items = messages
                finally:
                    log.stop()
                out[stage] = {
                    "messages": messages,
                    "seconds": seconds,
                    "cpu_s": cpu_after - cpu,
                    "cpu_children_s": children_after - children,
                    "commandstats": {
                        name.removeprefix("cmdstat_"): (int(row["calls"]), int(row["usec"]))
                        for name, row in stats.items()
                    },
                    "profile": profile,
                }
            out["_"] = {"slowlog_overflowed": log.overflowed}
        finally:
            log.close()
            admin.close()
    return out


def _per_order(usec: float, orders: int) -> float:
    return round(usec / orders, 2)


def _stage_figures(timed: dict[str, Any], logged: dict[str, Any], orders: int) -> dict[str, Any]:
    """One stage's row: server CPU, scripts, plain commands and what is outside commands."""
    stats = timed["commandstats"]
    script_usec = sum(stats.get(c, (0, 0))[1] for c in SCRIPT_COMMANDS)
    script_calls = sum(stats.get(c, (0, 0))[0] for c in SCRIPT_COMMANDS)
    profile: Profile = timed["profile"]
    attributed = sum(f.usec for f in profile.scripts.values())
    plain = logged["profile"].commands
    plain_usec = sum(f.usec for f in plain.values())
    top = sorted(plain.items(), key=lambda item: -item[1].usec)[:5]
    cpu_usec = timed["cpu_s"] * 1e6
    return {
        "messages": timed["messages"],
        "seconds": round(timed["seconds"], 3),
        "server_cpu_us_per_order": _per_order(cpu_usec, orders),
        "server_aof_rewrite_cpu_us_per_order": _per_order(timed["cpu_children_s"] * 1e6, orders),
        "scripts_calls": script_calls,
        "scripts_us_per_order": _per_order(script_usec, orders),
        "scripts_unattributed_us_per_order": _per_order(script_usec - attributed, orders),
        "plain_commands_us_per_order": _per_order(plain_usec, orders),
        "outside_commands_us_per_order": _per_order(cpu_usec - script_usec - plain_usec, orders),
        "top_plain_commands": {
            name: {"calls": f.calls, "us_per_order": _per_order(f.usec, orders)} for name, f in top
        },
    }


def _script_figures(
    stage: str, timed: Figures, logged: Figures | None, orders: int, server_usec: float
) -> dict[str, Any]:
    """One script's row: its calls and time (timing run) and what it ran (call-log run)."""
    inner_usec = sum(logged.inner_usec.values()) if logged else 0
    per_item = max(1, logged.items if logged else timed.items)
    inner = (
        {
            name: {
                "calls_per_item": round(calls / per_item, 2),
                "us_per_order": _per_order(logged.inner_usec[name], orders),
            }
            for name, calls in logged.inner_calls.most_common()
        }
        if logged
        else {}
    )
    return {
        "stage": stage,
        "calls": timed.calls,
        "items_per_call": round(timed.items / max(1, timed.calls), 1),
        "us_per_call": round(timed.usec / max(1, timed.calls), 1),
        "us_per_item": round(timed.usec / max(1, timed.items), 2),
        "us_per_order": _per_order(timed.usec, orders),
        "share_of_server_cpu": round(timed.usec / server_usec, 3),
        "commands_us_per_order": _per_order(inner_usec, orders),
        "lua_us_per_order": _per_order(timed.usec - inner_usec, orders),
        "commands_per_item": inner,
    }


def run(orders: int, procs: int, threshold_us: int, reference: bool) -> dict[str, Any]:
    """Both runs, and the figures per stage and per script (optionally the whole pipeline too)."""
    work = Path(tempfile.mkdtemp(prefix="sp-scripts-"))
    try:
        csv_path = work / "orders.csv"
        with csv_path.open("w", newline="") as handle:
            rows = write_orders(handle, orders)
        timed = _one_run(work, csv_path, procs, threshold_us, poll=False)
        logged = _one_run(work, csv_path, procs, 0, poll=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    server_usec = sum(timed[s]["cpu_s"] for s in STAGES) * 1e6
    stages = {s: _stage_figures(timed[s], logged[s], orders) for s in STAGES}
    # A script some stages share (stock_settle, window_add…) gets a row per stage, as commit does.
    seen = Counter(label for s in STAGES for label in timed[s]["profile"].scripts)
    scripts: dict[str, Any] = {}
    for stage in STAGES:
        logged_scripts = logged[stage]["profile"].scripts
        for label, figures in timed[stage]["profile"].scripts.items():
            name = f"{label}:{stage}" if seen[label] > 1 else label
            scripts[name] = _script_figures(
                stage, figures, logged_scripts.get(label), orders, server_usec
            )
    ranked = dict(sorted(scripts.items(), key=lambda item: -item[1]["us_per_order"]))
    result: dict[str, Any] = {
        "orders": orders,
        "rows": rows,
        "consumer_processes": procs,
        "threshold_us": threshold_us,
        "total": {
            "server_cpu_us_per_order": _per_order(server_usec, orders),
            "scripts_us_per_order": round(
                sum(s["scripts_us_per_order"] for s in stages.values()), 2
            ),
            "plain_commands_us_per_order": round(
                sum(s["plain_commands_us_per_order"] for s in stages.values()), 2
            ),
            "outside_commands_us_per_order": round(
                sum(s["outside_commands_us_per_order"] for s in stages.values()), 2
            ),
        },
        "stages": stages,
        "scripts": ranked,
        "slowlog_overflows": timed["_"]["slowlog_overflowed"] + logged["_"]["slowlog_overflowed"],
        "inner_commands_without_script": sum(logged[s]["profile"].orphans for s in STAGES),
    }
    if reference:
        from benchmarks.pipeline import run as run_pipeline

        whole = run_pipeline(orders, procs, 0)
        result["reference_whole_pipeline"] = {
            "orders_per_s": whole["orders_per_s"],
            "cpu_us_per_order": whole["cpu_us_per_order"],
            "server_top_commands": whole["server_top_commands"],
        }
    return result


def summary(result: dict[str, Any]) -> str:
    """The fixed text summary: a row per stage, then a row per script."""
    lines = [
        f"{result['orders']} orders, {result['consumer_processes']} consumer processes per stage",
        f"{'stage':<10}{'msgs':>7}{'server':>9}{'scripts':>9}{'plain':>8}{'other':>8}"
        "   top plain commands (µs/order)",
    ]
    for name, s in result["stages"].items():
        top = ", ".join(f"{c} {f['us_per_order']}" for c, f in s["top_plain_commands"].items())
        lines.append(
            f"{name:<10}{s['messages']:>7}{s['server_cpu_us_per_order']:>9.1f}"
            f"{s['scripts_us_per_order']:>9.1f}{s['plain_commands_us_per_order']:>8.1f}"
            f"{s['outside_commands_us_per_order']:>8.1f}   {top}"
        )
    t = result["total"]
    lines.append(
        f"{'total':<17}{t['server_cpu_us_per_order']:>9.1f}{t['scripts_us_per_order']:>9.1f}"
        f"{t['plain_commands_us_per_order']:>8.1f}{t['outside_commands_us_per_order']:>8.1f}"
    )
    if ref := result.get("reference_whole_pipeline"):
        lines.append(
            f"whole pipeline at once: {ref['cpu_us_per_order']['server']} µs/order server CPU, "
            f"{ref['orders_per_s']} orders/s"
        )
    lines += [
        "",
        f"{'script':<22}{'calls':>6}{'items':>7}{'µs/call':>9}{'µs/item':>8}{'µs/order':>9}"
        f"{'cmds':>6}{'Lua':>6}   commands per item",
    ]
    for name, s in result["scripts"].items():
        ran = ", ".join(
            f"{c.upper()} {f['calls_per_item']:g}" for c, f in s["commands_per_item"].items()
        )
        lines.append(
            f"{name:<22}{s['calls']:>6}{s['items_per_call']:>7.0f}{s['us_per_call']:>9.0f}"
            f"{s['us_per_item']:>8.2f}{s['us_per_order']:>9.2f}"
            f"{s['commands_us_per_order']:>6.1f}{s['lua_us_per_order']:>6.1f}   {ran}"
        )
    return "\n".join(lines)


def main() -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=20_000)
    parser.add_argument("--procs", type=int, default=2, help="consumer processes per stage")
    parser.add_argument(
        "--threshold-us", type=int, default=10, help="slow-log threshold of the timing run"
    )
    parser.add_argument(
        "--no-reference",
        dest="reference",
        action="store_false",
        help="skip the run of the whole pipeline at once",
    )
    parser.add_argument("--output", type=Path, default=None, help="write the JSON here instead")
    args = parser.parse_args()
    result = {
        "benchmark": "scripts",
        "machine": machine(),
        "result": run(args.orders, args.procs, args.threshold_us, args.reference),
    }
    save("scripts", result, args.output)
    print(summary(result["result"]))


if __name__ == "__main__":
    main()
