"""A small process supervisor (used by `streamproc up`): runs child commands, labels their output,
restarts a child that exits on its own after a growing delay, and stops them all on a signal.

Signals: every child runs in its own session (so its own process group). A Ctrl-C in a terminal
signals the whole foreground group; if the children were in it they would get that SIGINT and then
the SIGTERM forwarded here, and a consumer treats a second signal as "exit now". In their own
groups they get exactly one SIGTERM, from here. On Linux each child also asks the kernel for a
SIGTERM when this process dies (PR_SET_PDEATHSIG), so even a SIGKILL of the supervisor leaves no
child behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TextIO

from streamproc.logs import json_line, utc_timestamp

log = logging.getLogger("streamproc.up")

EXIT_OK, EXIT_GAVE_UP = 0, 1
EXIT_FORCED = 128 + signal.SIGINT
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
READ_CHUNK = 65_536
# A line longer than this is passed on in pieces rather than held in memory.
MAX_LINE = 1 << 20
# After a child exits, how long its output may still arrive (a descendant may hold the pipe).
OUTPUT_DRAIN_S = 1.0
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """One supervised command: its label (`payment.2`), argv and environment."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """When a child that exited on its own starts again (supervisord's autorestart, startsecs and
    startretries): after first_delay_s, doubling with each exit in a row that came less than
    stable_after_s after its start, up to max_delay_s; max_quick_failures such exits in a row
    and the supervisor gives up."""

    first_delay_s: float = 0.5
    max_delay_s: float = 30.0
    stable_after_s: float = 10.0
    max_quick_failures: int = 5

    def delay_s(self, quick_failures: int) -> float:
        """The wait before the next start, given the exits in a row that came too soon."""
        return float(min(self.max_delay_s, self.first_delay_s * 2 ** max(0, quick_failures - 1)))


class OutputSink:
    """Passes children's output on, one line at a time, saying which child wrote it:
    `payment.2 | …` as text, or with JSON logs one JSON object per line with a `child` field
    (a child's own JSON log line keeps its fields; any other line becomes the message)."""

    def __init__(self, stream: TextIO, names: Sequence[str], as_json: bool) -> None:
        self.stream = stream
        self.width = max((len(name) for name in names), default=0)
        self.as_json = as_json
        self._broken = False

    def line(self, name: str, raw: bytes) -> None:
        """Write one line of child `name`'s output."""
        text = raw.decode("utf-8", errors="replace").rstrip("\r")
        if self.as_json:
            text = json_line(self._as_record(name, text))
        else:
            text = f"{name:<{self.width}} | {text}"
        self._write(text + "\n")

    def _as_record(self, name: str, text: str) -> dict[str, object]:
        if text.startswith("{"):
            with contextlib.suppress(ValueError):
                record = json.loads(text)
                if isinstance(record, dict):
                    record["child"] = name
                    return record
        return {
            "ts": utc_timestamp(time.time()),
            "level": "INFO",
            "logger": "streamproc.up.output",  # a line the child wrote without a logger
            "message": text,
            "child": name,
        }

    def _write(self, text: str) -> None:
        if self._broken:
            return
        try:
            try:
                self.stream.write(text)
            except UnicodeEncodeError:  # a terminal that cannot show what a child wrote
                encoding = self.stream.encoding or "ascii"
                self.stream.write(text.encode(encoding, "replace").decode(encoding))
            self.stream.flush()
        except OSError:
            self._broken = True  # output piped into something that went away: keep supervising


def describe_exit(code: int | None) -> str:
    """'exit 3', 'killed by SIGKILL' or 'not started'."""
    if code is None:
        return "not started"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit {code}"


def _die_with_parent_hook() -> Callable[[], None] | None:
    """A preexec hook asking Linux to SIGTERM the child when this process dies."""
    if sys.platform != "linux":
        return None
    import ctypes

    # Resolved here, before any fork: the child only calls it.
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def hook() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
        if os.getppid() != parent:  # the parent died before prctl: no signal would ever come
            os._exit(1)

    return hook


class Supervisor:
    """Runs every child until a stop signal, restarting the ones that exit on their own."""

    def __init__(
        self,
        specs: Sequence[ChildSpec],
        output: OutputSink,
        stop_timeout_s: float,
        policy: RestartPolicy | None = None,
    ) -> None:
        self.specs = list(specs)
        self.output = output
        self.stop_timeout_s = stop_timeout_s
        self.policy = policy or RestartPolicy()
        self.gave_up: str | None = None
        self._procs: dict[str, asyncio.subprocess.Process] = {}
        self._terminated: set[int] = set()
        self._forced = False
        self._stopping: asyncio.Event | None = None
        self._preexec = _die_with_parent_hook()

    @property
    def stopping(self) -> asyncio.Event:
        """Set once the supervisor is stopping (a signal, or a child it gave up on)."""
        assert self._stopping is not None, "run() has not started"
        return self._stopping

    async def run(self) -> int:
        """Supervise until stopped; 0 after a clean stop, 1 after giving up, 130 if forced."""
        self._stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, self._on_signal, signum)
        try:
            slots = [asyncio.create_task(self._supervise(spec)) for spec in self.specs]
            for slot in slots:
                slot.add_done_callback(self._slot_ended)
            await self.stopping.wait()
            self._terminate_all()
            _, pending = await asyncio.wait(slots, timeout=self.stop_timeout_s)
            if pending:
                names = ", ".join(sorted(self._procs))
                log.warning("still running after %g s, killing: %s", self.stop_timeout_s, names)
                self._kill_all()
                await asyncio.wait(pending)
            for outcome in await asyncio.gather(*slots, return_exceptions=True):
                if isinstance(outcome, BaseException):
                    raise outcome  # a bug in a slot must not pass for a clean stop
        finally:
            for signum in STOP_SIGNALS:
                loop.remove_signal_handler(signum)
        if self.gave_up is not None:
            return EXIT_GAVE_UP
        return EXIT_FORCED if self._forced else EXIT_OK

    def _slot_ended(self, slot: asyncio.Task[None]) -> None:
        if not slot.cancelled() and slot.exception() is not None:
            self.stopping.set()  # a child nobody restarts: stop the rest and report it

    def _on_signal(self, signum: int) -> None:
        if not self.stopping.is_set():
            log.info(
                "%s: stopping %d processes (again to kill them at once)",
                signal.Signals(signum).name,
                len(self._procs),
            )
            self.stopping.set()
            self._terminate_all()
        elif not self._forced:
            log.warning("%s again: killing every process now", signal.Signals(signum).name)
            self._forced = True
            self._kill_all()

    def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        # Exactly one SIGTERM per child: a second one would make a consumer drop its work.
        if proc.returncode is None and proc.pid not in self._terminated:
            self._terminated.add(proc.pid)
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)

    def _terminate_all(self) -> None:
        for proc in self._procs.values():
            self._terminate(proc)

    def _kill_all(self) -> None:
        for proc in self._procs.values():
            if proc.returncode is None:  # not reaped, so its process group id is still its own
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)

    async def _supervise(self, spec: ChildSpec) -> None:
        """Keep one child running until the supervisor stops."""
        quick_failures = 0
        while not self.stopping.is_set():
            started = time.monotonic()
            code = await self._run_once(spec)
            if self.stopping.is_set():
                return
            uptime_s = time.monotonic() - started
            quick = uptime_s < self.policy.stable_after_s
            quick_failures = quick_failures + 1 if quick else 0
            if quick_failures >= self.policy.max_quick_failures:
                self.gave_up = (
                    f"{spec.name} exited {quick_failures} times in a row within "
                    f"{self.policy.stable_after_s:g} s of starting (last: {describe_exit(code)}); "
                    "gave up and stopped everything"
                )
                self.stopping.set()
                return
            delay_s = self.policy.delay_s(quick_failures)
            log.warning(
                "%s exited unexpectedly (%s) after %.1f s; restarting in %g s",
                spec.name,
                describe_exit(code),
                uptime_s,
                delay_s,
                extra={"child": spec.name, "exit": code},
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay_s)

    async def _run_once(self, spec: ChildSpec) -> int | None:
        """Start the child, pass its output on until it exits; its exit code (None: no start)."""
        try:
            proc = await asyncio.create_subprocess_exec(
                *spec.argv,
                env=dict(spec.env),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                # Its own process group, so a Ctrl-C reaches only `up` and killpg reaches the
                # child's own children; but `up`'s session, not a new one. Under the scheduler's
                # autogroups (a session is one CPU group) every child in a session of its own
                # would weigh as much as the server: on a small machine the server then waited
                # for a core for 10-15% of a run. The embedded server keeps a session of its own.
                process_group=0,
                preexec_fn=self._preexec,
            )
        except OSError as exc:
            log.error("%s: cannot start %s: %s", spec.name, spec.argv[0], exc)
            return None
        self._procs[spec.name] = proc
        if self.stopping.is_set():
            self._terminate(proc)  # started while the stop was being sent out
        log.info("%s started (pid %d)", spec.name, proc.pid, extra={"child": spec.name})
        assert proc.stdout is not None
        pump = asyncio.create_task(self._pump(spec.name, proc.stdout))
        try:
            code = await proc.wait()
        finally:
            await asyncio.wait([pump], timeout=OUTPUT_DRAIN_S)
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)
            del self._procs[spec.name]
            self._terminated.discard(proc.pid)
        if self.stopping.is_set():
            level = logging.INFO if code == 0 else logging.WARNING
            log.log(
                level,
                "%s stopped (%s)",
                spec.name,
                describe_exit(code),
                extra={"child": spec.name, "exit": code},
            )
        return code

    async def _pump(self, name: str, stream: asyncio.StreamReader) -> None:
        pending = b""
        while chunk := await stream.read(READ_CHUNK):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                self.output.line(name, line)
            if len(pending) > MAX_LINE:
                self.output.line(name, pending)
                pending = b""
        if pending:
            self.output.line(name, pending)
