"""The server settings streamproc recommends: one list, shipped in deploy/redis.conf, applied to
the servers streamproc starts, and a warning from `consume` when a server lacks them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from streamproc.keys import Keys
from streamproc.server_settings import HASH_LISTPACK_VALUE, RECOMMENDED, shortfalls
from tests.helpers import REPO_ROOT, consume_start_line


def _conf_lines() -> dict[str, str]:
    text = (REPO_ROOT / "deploy" / "redis.conf").read_text()
    pairs = (line.split(None, 1) for line in text.splitlines() if line and line[0] != "#")
    return {name: value.strip() for name, value in pairs}


def test_shipped_conf_lists_exactly_the_recommended_settings() -> None:
    assert _conf_lines() == dict(RECOMMENDED)


def test_the_test_server_runs_with_them_and_orders_stay_compact(r: redis.Redis) -> None:
    assert shortfalls(r) == []
    # An order hash with a payload and history over 64 bytes stays a listpack.
    key = Keys().order("X-1")
    r.hset(key, mapping={"s": "completed", "d": "x" * 300, "h": "y" * 200})
    assert r.object("encoding", key) == "listpack"


@pytest.fixture
def default_listpack(r: redis.Redis) -> Iterator[None]:
    r.config_set("hash-max-listpack-value", "64")
    yield
    r.config_set("hash-max-listpack-value", str(HASH_LISTPACK_VALUE))


@pytest.mark.usefixtures("default_listpack")
def test_consume_warns_about_a_server_with_the_default(
    r: redis.Redis, sp_env: dict[str, str]
) -> None:
    (found,) = shortfalls(r)
    assert "hash-max-listpack-value is 64" in found
    # The warning comes at start, before any work; then the consumer is stopped.
    seen = consume_start_line(sp_env, "listpack")
    assert "hash-max-listpack-value is 64" in seen
