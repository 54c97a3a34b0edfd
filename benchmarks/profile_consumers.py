"""Where the consumers' CPU goes: a py-spy profile of `consume --stage all` during a flood.

    python -m benchmarks.profile_consumers [--orders 50000] [--procs 2] [--rate 200]

Runs the pipeline as benchmarks/pipeline.py does (private server, seeded CSV, PROCS consumers,
one `streamproc ingest`, `streamproc wait`), and once the consumers are up (after their imports,
before the clock starts) attaches `py-spy record --native --format raw` to each of them. Once
drained, py-spy gets SIGINT, stops sampling and writes its collapsed stacks ("frame;frame;…
count", a frame being `function (file:line)`); then the consumers are stopped as in pipeline.py.
So the profile covers the measured run, not the consumers' start-up or shutdown.

With --native, py-spy samples waiting threads too (epoll, locks, conditions): the stacks that
pass through one of WAITS are left out. The remaining "busy" samples per order came out 2-3
times the CPU per order /proc counted over the run (both are reported; an idle machine gave equal
figures for a lone process), most likely because a thread that is ready to run but waits for a
core (the server, two consumers, the ingest and py-spy share 2 cores) counts as busy. The shares
are what to read; /proc gives the absolute figure. Native frames also show where time goes inside
hiredis, uvloop, msgspec and duckdb.

Reported: the busy samples, the top functions by self share (the innermost frame, native
included) and by inclusive share (a Python function counted once per stack; the CLI, asyncio.run
and thread frames left out), the shares by area (stage handlers in consumers/, the snapshot code
with duckdb, hiredis, redis-py, the asyncio/uvloop event loop, msgspec/json, prometheus_client,
the rest of streamproc, other) as self (the innermost frame that is not libc or the interpreter)
and inclusive, and each stage handler module's inclusive share. Also the consumers' CPU per
order (/proc) and orders/s: py-spy pauses a process for each sample (--native needs that), so
both are somewhat worse than pipeline.py's.

py-spy needs ptrace permission (root, CAP_SYS_PTRACE or kernel.yama.ptrace_scope 0); without it
the script exits 2. Results go to benchmarks/results/profile_consumers.json; --raw-dir keeps
py-spy's files (for flamegraph.pl).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from benchmarks.common import ProfilerUnavailable, profile_cli
from benchmarks.pipeline import flood_figures, profiled_flood

REPO_ROOT = Path(__file__).resolve().parent.parent
FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*?)(?::\d+)?\)$")
Stacks = Counter[tuple[str, ...]]

SCAFFOLDING = (
    "click/",
    "<frozen runpy>",
    "streamproc/__main__.py",
    "streamproc/cli.py",
    "asyncio/runners.py",
    "threading.py",
    "concurrent/futures/thread.py",
)
EVENT_LOOP = ("asyncio/", "uvloop/", "selectors.py", "lib-dynload/_asyncio", "lib-dynload/select")
# Native frames in which a thread waits (for events, a lock, a condition): not CPU time.
WAITS = {
    "epoll_wait",
    "epoll_pwait",
    "epoll_pwait2",
    "poll",
    "ppoll",
    "select",
    "pselect",
    "PyThread_acquire_lock_timed",
    "take_gil",
    "pthread_cond_wait",
    "pthread_cond_timedwait",
    "pthread_cond_clockwait",
    "sem_wait",
    "sem_timedwait",
    "sem_clockwait",
    "nanosleep",
    "clock_nanosleep",
}
# First match wins; a frame's file is shortened first (see _short_path).
AREAS: list[tuple[str, Callable[[str], bool]]] = [
    ("stage handlers (consumers/)", lambda f: f.startswith("consumers/")),
    (
        "snapshot (streamproc/analytics, duckdb)",
        lambda f: f.startswith(("streamproc/analytics/", "duckdb/")) or "_duckdb" in f,
    ),
    # hiredis's and uvloop's C frames name their source files (as they were built, /project/…).
    ("hiredis", lambda f: "hiredis" in f or f.endswith(("/src/pack.c", "/src/reader.c"))),
    ("redis-py", lambda f: f.startswith("redis/")),
    (
        "event loop (asyncio/uvloop)",
        lambda f: (
            f.startswith(EVENT_LOOP) or any(m in f for m in ("/uvloop/", "libuv", "_asyncio"))
        ),
    ),
    ("msgspec/json", lambda f: "msgspec" in f or f.startswith("json/")),
    ("prometheus_client", lambda f: f.startswith("prometheus_client/")),
    ("streamproc (rest)", lambda f: f.startswith("streamproc/")),
    ("other", lambda f: True),
]


def _py_spy() -> str:
    beside = Path(sys.executable).parent / "py-spy"  # the venv's, when not on PATH
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if not found:
        raise ProfilerUnavailable("py-spy is not installed: pip install -e '.[bench]'")
    return found


def _short_path(path: str) -> str:
    """site-packages/x → x, the repo's files relative to it, the standard library's from lib/."""
    for marker in ("site-packages/", "dist-packages/"):
        if marker in path:
            return path.split(marker, 1)[1]
    if path.startswith(str(REPO_ROOT) + "/"):
        return path[len(str(REPO_ROOT)) + 1 :]
    stdlib = re.search(r"/lib/python3\.\d+/(.*)$", path)
    return stdlib.group(1) if stdlib else path


def _frame(raw: str) -> tuple[str, str]:
    """`func (/path/file.py:12)` → (`func (short/file.py)`, `short/file.py`)."""
    match = FRAME.match(raw)
    if not match:
        return raw, raw
    file = _short_path(match["file"])
    return f"{match['func']} ({file})", file


def parse_collapsed(lines: Iterable[str]) -> Stacks:
    """py-spy's raw output → sample count per stack of (function, file) names, outermost first."""
    stacks: Stacks = Counter()
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if stack and count.isdigit():
            stacks[tuple(_frame(raw)[0] for raw in stack.split(";"))] += int(count)
    return stacks


def _file_of(function: str) -> str:
    return function.rpartition(" (")[2].rstrip(")")


def _area(function: str) -> str:
    file = _file_of(function)
    return next(name for name, matches in AREAS if matches(file))


def _is_system(function: str) -> bool:
    """libc, the interpreter: native frames outside site-packages that no area claims."""
    return _file_of(function).startswith("/") and _area(function) == "other"


def _scaffolding(function: str) -> bool:
    """Frames every busy stack of a thread goes through (the CLI, asyncio.run, threads), and
    native frames: left out of the inclusive ranking, where they would all come first."""
    file = _file_of(function)
    return file.startswith(SCAFFOLDING) or not file.endswith(".py")


def _is_wait(stack: tuple[str, ...]) -> bool:
    return any(f.rpartition(" (")[0] in WAITS and not f.endswith(".py)") for f in stack)


def _self_area(stack: tuple[str, ...]) -> str:
    """The area of the innermost frame that is not libc or the interpreter (a write(2) counts
    for whoever called it)."""
    return _area(next((f for f in reversed(stack) if not _is_system(f)), stack[-1]))


def analyse(stacks: Stacks, top: int = 25) -> dict[str, Any]:
    """Self and inclusive shares by function, by area and by stage handler module, of the
    samples that are not waits (see WAITS)."""
    idle = sum(n for stack, n in stacks.items() if _is_wait(stack))
    stacks = Counter({stack: n for stack, n in stacks.items() if not _is_wait(stack)})
    total = sum(stacks.values())
    self_fn: Counter[str] = Counter()
    incl_fn: Counter[str] = Counter()
    self_area: Counter[str] = Counter()
    incl_area: Counter[str] = Counter()
    incl_handler: Counter[str] = Counter()
    for stack, count in stacks.items():
        self_fn[stack[-1]] += count
        self_area[_self_area(stack)] += count
        for function in set(stack):  # once per stack: recursion does not count twice
            incl_fn[function] += count
        for area in {_area(f) for f in stack}:
            incl_area[area] += count
        for file in {_file_of(f) for f in stack if f.endswith(".py)")}:
            if file.startswith("consumers/"):
                incl_handler[file] += count

    def share(n: int) -> float:
        return round(n / total, 4) if total else 0.0

    def ranked(counter: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"function": name, "samples": n, "share": share(n)}
            for name, n in counter.most_common(top)
        ]

    order = [name for name, _ in AREAS]
    return {
        "samples": total,
        "wait_samples_left_out": idle,
        "top_self": ranked(self_fn),
        "top_inclusive": ranked(Counter({f: n for f, n in incl_fn.items() if not _scaffolding(f)})),
        "self_share_by_area": {a: share(self_area[a]) for a in order if self_area[a]},
        "inclusive_share_by_area": {a: share(incl_area[a]) for a in order if incl_area[a]},
        "stage_handler_inclusive_by_module": {
            f: share(n) for f, n in sorted(incl_handler.items(), key=lambda kv: -kv[1])
        },
    }


class _Spies:
    """One `py-spy record --pid` per consumer, started once the consumers are up."""

    def __init__(self, work: Path, rate: int) -> None:
        self.work, self.rate = work, rate
        self.procs: list[tuple[subprocess.Popen[bytes], Path, Path]] = []

    def attach(self, _server: int, pids: list[int]) -> None:
        spy = _py_spy()
        for n, pid in enumerate(pids):
            out, log = self.work / f"consumer-{n}.txt", self.work / f"py-spy-{n}.log"
            cmd = [spy, "record", "--format", "raw", "--rate", str(self.rate), "--full-filenames"]
            cmd += ["--native"]
            with log.open("wb") as handle:
                proc = subprocess.Popen(
                    [*cmd, "--pid", str(pid), "-o", str(out)],
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                )
            self.procs.append((proc, out, log))
        for proc, _, log in self.procs:  # sampling has begun, or py-spy gave up
            deadline = time.monotonic() + 15
            while b"Sampling process" not in log.read_bytes():
                if proc.poll() is not None or time.monotonic() > deadline:
                    self._fail(log)
                time.sleep(0.05)

    def _fail(self, log: Path) -> None:
        self.stop()
        said = log.read_text(errors="replace").strip()
        if "ermission" in said or "not permitted" in said:
            raise ProfilerUnavailable(
                "py-spy has no permission to attach to the consumers (ptrace): run as root, "
                f"with CAP_SYS_PTRACE or kernel.yama.ptrace_scope=0. py-spy said: {said}"
            )
        raise RuntimeError(f"py-spy did not start sampling: {said}")

    def detach(self) -> None:
        """SIGINT: py-spy stops sampling and writes its file; the consumer runs on. (SIGTERM
        would end py-spy without writing anything.)"""
        for proc, _, _ in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)

    def stop(self) -> None:
        self.detach()
        for proc, _, _ in self.procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stacks(self) -> list[Stacks]:
        found = []
        for proc, out, log in self.procs:
            if not out.exists():
                said = log.read_text(errors="replace").strip()
                raise RuntimeError(f"py-spy wrote no profile (exit {proc.returncode}): {said}")
            found.append(parse_collapsed(out.read_text().splitlines()))
        return found


def run(orders: int, procs: int, rate: int = 200, raw_dir: Path | None = None) -> dict[str, Any]:
    """One profiled flood of `orders` through `procs` consumers."""
    work = Path(tempfile.mkdtemp(prefix="sp-prof-"))
    try:
        spies = _Spies(work, rate)
        m = profiled_flood(work, orders, procs, spies)
        per_process = spies.stacks()
        if raw_dir:
            raw_dir.mkdir(parents=True, exist_ok=True)
            for _, out, _ in spies.procs:
                shutil.copy(out, raw_dir / out.name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    analysed = analyse(sum(per_process, Counter()))
    return {
        **flood_figures(m, orders, procs),
        "py_spy": {"rate_hz": rate, "options": "record --native --format raw (blocking)"},
        "cpu_seconds_consumers": round(m.cpu_consumers, 2),
        # Busy samples / rate, from the attach (just before the clock starts) until drained:
        # compare with cpu_us_per_order["consumers"] (see the module's docstring).
        "sampled_us_per_order": round(analysed["samples"] / rate / orders * 1e6, 1),
        "samples_per_process": [sum(s.values()) for s in per_process],
        **analysed,
    }


def summary(result: dict[str, Any]) -> str:
    """The figures as a few readable tables."""
    lines = [
        f"{result['orders']} orders, {result['consumer_processes']} consumers, "
        f"{result['orders_per_s']} orders/s, consumers {result['cpu_us_per_order']['consumers']} "
        f"us CPU/order (/proc), {result['samples']} busy samples "
        f"({result['sampled_us_per_order']} us/order at {result['py_spy']['rate_hz']} Hz; "
        f"{result['wait_samples_left_out']} waiting left out)",
        "",
        f"{'area':44} {'self':>7} {'incl':>7}",
    ]
    incl = result["inclusive_share_by_area"]
    for area, _ in AREAS:
        self_share = result["self_share_by_area"].get(area, 0.0)
        if self_share or incl.get(area):
            lines.append(f"{area:44} {self_share:7.1%} {incl.get(area, 0.0):7.1%}")
    lines += ["", "stage handlers, inclusive:"]
    lines += [f"  {f:42} {s:7.1%}" for f, s in result["stage_handler_inclusive_by_module"].items()]
    for key, title in (("top_self", "self"), ("top_inclusive", "inclusive")):
        lines += ["", f"top functions by {title} share:"]
        lines += [f"  {row['share']:6.1%}  {row['function']}" for row in result[key]]
    return "\n".join(lines)


def main() -> None:
    """CLI entry point."""
    profile_cli(
        "profile_consumers",
        __doc__,
        run,
        summary,
        rate=200,
        rate_help="py-spy samples per second",
        raw_help="keep py-spy's files here",
    )


if __name__ == "__main__":
    main()
