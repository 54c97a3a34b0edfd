"""Helpers for the `streamproc up` tests: a running `up`, its process tree (Linux /proc), which
pids still live, and blocks of free ports."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import httpx
import pytest

from tests.helpers import HOST, spawn_cli, stop_procs
from tests.support import wait_consumers_registered

HAS_PROC = Path("/proc/self/task").is_dir()


def children(pid: int) -> list[int]:
    """Direct children of pid (every thread's list), empty once it is gone."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(p) for p in (task / "children").read_text().split()]
    return found


def descendants(pid: int) -> set[int]:
    """Every live process below pid."""
    found: set[int] = set()
    todo = children(pid)
    while todo:
        child = todo.pop()
        if child not in found:
            found.add(child)
            todo += children(child)
    return found


def cmdline(pid: int) -> str:
    """The command line of pid, arguments joined by spaces ('' once it is gone)."""
    try:
        return (Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")).decode().strip()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    """Whether pid runs (a zombie counts as gone: nothing is left of it but its exit status)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(pids: Iterable[int], timeout_s: float) -> set[int]:
    """Wait until every pid is gone; return the ones still alive at the deadline."""
    left = set(pids)
    deadline = time.monotonic() + timeout_s
    while left and time.monotonic() < deadline:
        left = {pid for pid in left if alive(pid)}
        time.sleep(0.05)
    return {pid for pid in left if alive(pid)}


def kill_leftovers(pids: Iterable[int]) -> None:
    """SIGKILL those of these pids (all started by the test) that still run."""
    for pid in pids:
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)


def free_port_block(count: int, attempts: int = 50) -> int:
    """The first of `count` consecutive loopback ports that are all free right now."""
    for _ in range(attempts):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((HOST, 0))
            base = int(probe.getsockname()[1])
        if base + count > 65535:
            continue
        socks: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(sock)
                sock.bind((HOST, port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError(f"no block of {count} free ports found")


def wait_api_healthy(
    port: int, proc: subprocess.Popen[bytes], log: Callable[[], str], timeout_s: float = 30
) -> None:
    """Wait until the API on `port` answers /api/health with 200; fail with `log()` if `proc`
    (which runs it) exits first or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert proc.poll() is None, f"exited {proc.returncode}\n{log()}"
        try:
            if httpx.get(f"http://{HOST}:{port}/api/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"the API never answered\n{log()}"
        time.sleep(0.1)


GRACE_S = 4.0  # STREAMPROC_SHUTDOWN_GRACE_S's default
STOP_MARGIN_S = 3.0  # up's own margin over the grace period


class Up:
    """One `streamproc up` process; every pid ever seen below it is killed at teardown."""

    def __init__(self, env: dict[str, str], log_path: Path, *args: str) -> None:
        self.env = env
        self.log_path = log_path
        self.proc = spawn_cli(["up", *args], env, log_path=log_path)
        self.seen: set[int] = set()

    def tree(self) -> dict[int, str]:
        """pid -> command line of every process below up."""
        found = {pid: cmdline(pid) for pid in descendants(self.proc.pid)}
        self.seen |= set(found)
        return found

    def stage_pids(self, stage: str) -> set[int]:
        """Children running `consume --stage STAGE`."""
        return {pid for pid, cmd in self.tree().items() if f"consume --stage {stage}" in cmd}

    def wait_ready(
        self, scale: dict[str, int], api_port: int | None, timeout_s: float = 30
    ) -> None:
        """Every consumer has joined its group and the API answers."""
        for stage, count in scale.items():
            if count:
                wait_consumers_registered(self.env, stage, count, self.log, 30)
        if api_port is not None:
            wait_api_healthy(api_port, self.proc, self.log)
        self.tree()

    def ctrl_c(self) -> None:
        """What a terminal sends on Ctrl-C: SIGINT to the foreground process group."""
        os.killpg(self.proc.pid, signal.SIGINT)

    def wait(self, timeout_s: float) -> int:
        """up's exit code."""
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"up still running after {timeout_s} s\n{self.log()}")

    def log(self) -> str:
        """Everything up and its children printed."""
        return self.log_path.read_text(errors="replace")[-8000:]

    def close(self) -> None:
        """Stop up if the test did not, and kill anything it left behind."""
        if self.proc.poll() is None:
            self.tree()
        stop_procs([self.proc], timeout=GRACE_S + STOP_MARGIN_S + 2)
        kill_leftovers(self.seen)
