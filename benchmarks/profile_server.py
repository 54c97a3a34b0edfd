"""Where the server's main thread goes: a perf profile of redis-server during a flood.

    python -m benchmarks.profile_server [--orders 50000] [--procs 2] [--rate 499]

Runs the pipeline as benchmarks/pipeline.py does (private server, seeded CSV, PROCS consumers,
one `streamproc ingest`, `streamproc wait`) and, once the consumers are up, attaches
`perf record --call-graph dwarf` to the server's main thread, the one that runs every command and
script (AOF rewrite children and background threads are left out: pipeline.py reports their CPU
apart). Once drained, perf gets SIGINT and `perf script` gives each sample's stack.

Reported: per part of the server (PARTS: scripts, the commands they call, the Lua strings made
for KEYS, ARGV and replies, feeding the AOF, XREADGROUP, …) the share of samples whose stack
passes through it, the part of script time spent outside any command (the Lua interpreter and the
conversions), per command the share of samples inside it, and the top functions by self share.
Debian's redis-server names Redis's own functions but not those of the Lua interpreter linked
into it: their frames are unknown addresses, counted as `[unknown]`.

Needs perf (Debian: linux-perf) and leave to profile another process (root, CAP_PERFMON, or
kernel.perf_event_paranoid at most 1); without them the script exits 2. Results go to
benchmarks/results/profile_server.json; --raw-dir keeps perf.data (for perf report).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from benchmarks.common import ProfilerUnavailable, profile_cli
from benchmarks.pipeline import flood_figures, profiled_flood

# (name, the server function a sample's stack passes through), broadest first.
PARTS: tuple[tuple[str, str], ...] = (
    ("scripts (EVALSHA)", "evalGenericCommand"),
    ("commands called by scripts", "scriptCall"),
    ("Lua strings for KEYS, ARGV and command replies", "lua_pushlstring"),
    ("feeding the AOF (commands written)", "feedAppendOnlyFile"),
    ("freeing the commands propagated", "redisOpArrayFree"),
    ("XCLAIMs propagated for delivered entries", "streamPropagateXCLAIM"),
    ("XREADGROUP", "xreadCommand"),
    ("serving blocked XREADGROUPs", "handleClientsBlockedOnKeys"),
    ("parsing requests", "processMultibulkBuffer"),
    ("writing replies", "handleClientsWithPendingWrites"),
    ("key lookups", "lookupKey"),
    ("formatting numbers (printf)", "__vfprintf_internal"),
    ("parsing numbers (strtod)", "__GI_____strtod_l_internal"),
)
# Commands by their implementing function, wherever they are called from (scripts or clients).
COMMANDS: tuple[tuple[str, str], ...] = (
    ("HMGET", "hmgetCommand"),
    ("HSET", "hsetCommand"),
    ("XADD", "xaddCommand"),
    ("XACK", "xackCommand"),
    ("ZADD", "zaddGenericCommand"),
    ("ZMSCORE", "zmscoreCommand"),
    ("ZSCORE", "zscoreCommand"),
    ("XTRIM", "xtrimCommand"),
)
UNKNOWN = "[unknown]"


def parse_perf_script(lines: Iterable[str]) -> Counter[tuple[str, ...]]:
    """`perf script -F ip,sym` output (per sample one `<ip> <symbol>` line per frame, innermost
    first, and a blank line) → sample count per stack of symbols, innermost first."""
    stacks: Counter[tuple[str, ...]] = Counter()
    frames: list[str] = []
    for line in [*lines, ""]:
        parts = line.split(None, 1)
        if parts:
            frames.append(parts[1].strip() if len(parts) > 1 else UNKNOWN)
        elif frames:
            stacks[tuple(frames)] += 1
            frames = []
    return stacks


def analyse(stacks: Counter[tuple[str, ...]], top: int = 25) -> dict[str, Any]:
    """Shares of the samples by part, by command and by innermost function."""
    total = sum(stacks.values())

    def share(n: int) -> float:
        return round(n / total, 4) if total else 0.0

    def through(function: str) -> int:
        return sum(n for stack, n in stacks.items() if function in stack)

    outside_commands = sum(
        n
        for stack, n in stacks.items()
        if "evalGenericCommand" in stack and "scriptCall" not in stack
    )
    leaves: Counter[str] = Counter()
    lua_vm = 0  # unnamed innermost frames of a script outside its commands: the Lua interpreter
    for stack, n in stacks.items():
        leaves[stack[0]] += n
        if stack[0] == UNKNOWN and "evalGenericCommand" in stack and "scriptCall" not in stack:
            lua_vm += n
    return {
        "samples": total,
        "parts": {name: share(through(function)) for name, function in PARTS},
        "scripts_outside_commands": share(outside_commands),
        "scripts_unnamed_self": share(lua_vm),
        "commands": {name: share(through(function)) for name, function in COMMANDS},
        "top_self": [
            {"function": name, "samples": n, "share": share(n)}
            for name, n in leaves.most_common(top)
        ],
    }


def _perf() -> str:
    found = shutil.which("perf")
    if not found:
        raise ProfilerUnavailable("perf is not installed (Debian: apt-get install linux-perf)")
    return found


class _Recorder:
    """`perf record` on the server's main thread, from the consumers' start until drained."""

    def __init__(self, perf: str, work: Path, rate: int) -> None:
        self.perf, self.rate = perf, rate
        self.data, self.log = work / "perf.data", work / "perf.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def attach(self, server: int, _consumers: list[int]) -> None:
        cmd = [self.perf, "record", "-F", str(self.rate), "--call-graph", "dwarf,16384"]
        cmd += ["-t", str(server), "-o", str(self.data)]
        with self.log.open("wb") as handle:
            self.proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT)
        time.sleep(0.5)  # perf says nothing while it records; a refusal ends it at once
        if self.proc.poll() is not None:
            said = self.log.read_text(errors="replace").strip()
            if "paranoid" in said or "ermission" in said or "not permitted" in said:
                raise ProfilerUnavailable(f"perf may not profile the server: {said[:400]}")
            raise RuntimeError(f"perf record ended at once: {said[:400]}")

    def detach(self) -> None:
        """SIGINT: perf stops recording and finishes writing perf.data."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(120)

    def stop(self) -> None:
        """Detached, should the flood have failed before its end."""
        self.detach()

    def stacks(self) -> Counter[tuple[str, ...]]:
        if not self.data.exists():
            said = self.log.read_text(errors="replace").strip()
            raise RuntimeError(f"perf wrote no profile: {said[:400]}")
        out = subprocess.run(
            [self.perf, "script", "-i", str(self.data), "-F", "ip,sym"],
            capture_output=True,
            text=True,
            check=True,
        )
        return parse_perf_script(out.stdout.splitlines())


def run(orders: int, procs: int, rate: int = 499, raw_dir: Path | None = None) -> dict[str, Any]:
    """One profiled flood of `orders` through `procs` consumers."""
    perf = _perf()
    work = Path(tempfile.mkdtemp(prefix="sp-perf-"))
    try:
        recorder = _Recorder(perf, work, rate)
        m = profiled_flood(work, orders, procs, recorder)
        analysed = analyse(recorder.stacks())
        if raw_dir:
            raw_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy(recorder.data, raw_dir / "perf.data")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        **flood_figures(m, orders, procs),
        "perf": {"rate_hz": rate, "options": "record --call-graph dwarf,16384 -t <main thread>"},
        **analysed,
    }


def summary(result: dict[str, Any]) -> str:
    """The figures as a few readable tables."""
    server_us = result["cpu_us_per_order"]["server"]
    lines = [
        f"{result['orders']} orders, {result['consumer_processes']} consumers, "
        f"{result['orders_per_s']} orders/s, server {server_us} us CPU/order, "
        f"{result['samples']} samples of its main thread",
        "",
        f"{'part (samples passing through it)':52} {'share':>6} {'us/order':>9}",
    ]
    rows = [*result["parts"].items()]
    outside = result["scripts_outside_commands"]
    rows[2:2] = [
        ("scripts outside any command (Lua, conversions)", outside),
        ("  of which in unnamed (Lua interpreter) frames", result["scripts_unnamed_self"]),
    ]
    rows += [(f"command {name}", s) for name, s in result["commands"].items()]
    lines += [f"{name:52} {s:6.1%} {s * server_us:9.1f}" for name, s in rows]
    lines += ["", "top functions by self share:"]
    lines += [f"  {row['share']:6.1%}  {row['function']}" for row in result["top_self"]]
    return "\n".join(lines)


def main() -> None:
    """CLI entry point."""
    profile_cli(
        "profile_server",
        __doc__,
        run,
        summary,
        rate=499,
        rate_help="perf samples per second",
        raw_help="keep perf.data here",
    )


if __name__ == "__main__":
    main()
