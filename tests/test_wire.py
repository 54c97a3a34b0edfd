"""streamproc.wire, the lean connection `streamproc ingest` runs on instead of redis-py: it reads
URLs as redis-py does, logs in, keeps replies in order, survives error replies, reconnects after
a broken connection; and the ingest command really starts without importing redis-py."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import hiredis
import pytest
import redis
from redis.connection import parse_url as redis_py_parse_url

from streamproc.address import describe_connection_error
from streamproc.wire import (
    Address,
    CannotConnect,
    ConnectionLost,
    ReplyError,
    Wire,
    connect,
    parse_url,
)
from tests.helpers import HOST, REPO_ROOT, free_port, run_cli, server_binary
from tests.support import KEYS, one_line, write_orders

USER, PASSWORD = "wire-test", "p@ss:w/rd"
QUOTED_PASSWORD = quote(PASSWORD, safe="")


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost",
        "redis://example.org:7000/3",
        f"redis://{USER}:{QUOTED_PASSWORD}@127.0.0.1:6380/2",
        "redis://:secret@127.0.0.1",
        "redis://127.0.0.1/0?db=5",
        "unix:///tmp/some.sock?db=1",
        f"unix://{USER}:{QUOTED_PASSWORD}@/tmp/some.sock",
    ],
)
def test_parse_url_reads_what_redis_py_reads(url: str) -> None:
    parsed = parse_url(url)
    assert parsed is not None
    theirs = redis_py_parse_url(url)  # type: ignore[no-untyped-call]
    assert parsed.db == theirs.get("db", 0)
    assert parsed.username == theirs.get("username")
    assert parsed.password == theirs.get("password")
    if "path" in theirs:
        assert parsed.path == theirs["path"]
    else:
        assert (parsed.host, parsed.port) == (theirs["host"], theirs.get("port", 6379))


@pytest.mark.parametrize(
    "url",
    [
        "rediss://127.0.0.1:6380/0",  # TLS
        "redis://127.0.0.1/0?socket_timeout=5",  # a client option
        "redis://127.0.0.1:notaport/0",
        "redis://127.0.0.1/zero",
        "valkey://127.0.0.1",
    ],
)
def test_urls_it_does_not_cover_are_left_to_redis_py(url: str) -> None:
    assert parse_url(url) is None


def test_commands_pipelined_replies_in_order_and_an_error_reply_leaves_it_usable(
    redis_url: str, r: redis.Redis
) -> None:
    wire = connect(redis_url, 2.0, 10.0)
    assert wire is not None
    try:
        assert wire.call("PING") == b"PONG"
        commands = [("SET", "w", "41"), ("INCR", "w"), ("HSET", "w", "f", "v"), ("GET", "w")]
        wire.send(b"".join(hiredis.pack_command(c) for c in commands))  # type: ignore[arg-type]
        assert wire.read() == b"OK"
        assert wire.read() == 42
        with pytest.raises(ReplyError, match="WRONGTYPE"):
            wire.read()
        assert wire.read() == b"42"
        assert wire.call("GET", "missing") is None
        assert wire.call("PING") == b"PONG"
    finally:
        wire.disconnect()
    assert r.get("w") == "42"


@pytest.fixture
def acl_user(r: redis.Redis) -> Iterator[str]:
    """A user with a password that needs percent-encoding in a URL; removed afterwards."""
    r.acl_setuser(USER, enabled=True, passwords=[f"+{PASSWORD}"], keys=["*"], commands=["+@all"])
    try:
        yield USER
    finally:
        r.acl_deluser(USER)


def test_logs_in_and_selects_the_database_from_the_url(
    redis_url: str, acl_user: str, r: redis.Redis
) -> None:
    base = redis_url.removeprefix("redis://").rsplit("/", 1)[0]
    wire = connect(f"redis://{acl_user}:{QUOTED_PASSWORD}@{base}/2", 2.0, 10.0)
    assert wire is not None
    try:
        assert wire.call("ACL", "WHOAMI") == acl_user.encode()
        wire.call("SET", "in-db-2", "yes")
    finally:
        wire.disconnect()
    assert r.get("in-db-2") is None
    with redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/2") as db2:
        assert db2.get("in-db-2") == b"yes"

    with pytest.raises(CannotConnect, match="WRONGPASS"):
        connect(f"redis://{acl_user}:wrong@{base}/0", 2.0, 10.0)


def test_a_broken_connection_raises_connection_lost_and_the_next_use_reconnects(
    redis_url: str, r: redis.Redis
) -> None:
    wire = connect(redis_url, 2.0, 10.0)
    assert wire is not None
    try:
        first = wire.call("CLIENT", "ID")
        r.client_kill_filter(_id=first)
        with pytest.raises(ConnectionLost):
            wire.call("PING")
        assert wire.call("PING") == b"PONG"
        assert wire.call("CLIENT", "ID") != first
    finally:
        wire.disconnect()


def test_no_server_is_cannot_connect_in_the_os_words() -> None:
    url = f"redis://{HOST}:{free_port()}/0"
    with pytest.raises(CannotConnect) as refused:
        connect(url, 2.0, 10.0)
    assert str(describe_connection_error(url, refused.value)).endswith("Connection refused")


def test_a_server_that_never_answers_times_out() -> None:
    with socket.socket() as listener:
        listener.bind((HOST, 0))
        listener.listen()
        port = listener.getsockname()[1]
        wire = Wire(Address(host=HOST, port=port), 2.0, 0.3)
        started = time.monotonic()
        with pytest.raises(ConnectionLost, match="timed out"):
            wire.call("PING")
        assert time.monotonic() - started < 5


def test_unix_socket(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    args = [str(server_binary()), "--port", "0", "--unixsocket", str(path), "--save", ""]
    args += ["--appendonly", "no", "--dir", str(tmp_path)]
    server = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        wire = connect(f"unix://{path}?db=1", 2.0, 10.0)
        assert wire is not None
        wire.call("SET", "k", "v")
        wire.disconnect()
        with redis.Redis(unix_socket_path=str(path), db=1) as client:
            assert client.get("k") == b"v"
    finally:
        server.terminate()
        server.wait(10)


# Runs the CLI in a fresh interpreter and reports which of the heavy modules it imported.
_INGEST_AND_LIST_MODULES = textwrap.dedent(
    """
    import sys
    from streamproc.cli import main
    try:
        main(["ingest", sys.argv[1]])
    except SystemExit as exc:
        code = exc.code
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("redis", "asyncio"))
    print("modules:", code, "|" + ",".join(heavy))
    """
)


@pytest.mark.parametrize(
    ("query", "uses_redis_py"), [("", False), ("?socket_timeout=5", True)], ids=["wire", "redis-py"]
)
def test_ingest_starts_without_redis_py_where_the_url_allows(
    tmp_path: Path,
    sp_env: dict[str, str],
    r: redis.Redis,
    query: str,
    uses_redis_py: bool,
) -> None:
    path = write_orders(tmp_path / "o.csv", [one_line(f"W-{n}", "SKU-1", 1) for n in range(7)])
    env = {**sp_env, "STREAMPROC_REDIS_URL": sp_env["STREAMPROC_REDIS_URL"] + query}
    done = subprocess.run(
        [sys.executable, "-c", _INGEST_AND_LIST_MODULES, str(path)],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    code, heavy = done.stdout.rsplit("modules: ", 1)[-1].strip().split(" |")
    assert code == "0", done.stdout + done.stderr
    assert ("redis" in heavy.split(",")) is uses_redis_py, heavy
    assert r.hget(KEYS.state_counts, "pending") == "7"


def test_ingest_with_a_wrong_password_exits_3_without_showing_it(
    tmp_path: Path, sp_env: dict[str, str], acl_user: str
) -> None:
    path = write_orders(tmp_path / "o.csv", [one_line("W-1", "SKU-1", 1)])
    base = sp_env["STREAMPROC_REDIS_URL"].removeprefix("redis://")
    env = {**sp_env, "STREAMPROC_REDIS_URL": f"redis://{acl_user}:hunter2@{base}"}
    done = run_cli(["ingest", str(path)], env)
    assert done.returncode == 3
    assert "WRONGPASS" in done.stderr
    assert "hunter2" not in done.stderr + done.stdout
