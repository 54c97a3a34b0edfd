"""Shared fixtures: one real Redis server per session on a free loopback port, clean per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.helpers import ServerHandle, server_binary


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    """A redis-server (or embedded valkey) the session owns; fault tests may kill/pause it."""
    server = ServerHandle(server_binary(), tmp_path_factory.mktemp("redis-server"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: ServerHandle) -> str:
    """URL of the session server, running and empty (restarted if an earlier test killed it)."""
    if redis_server.paused:
        redis_server.resume()
    if not redis_server.is_running():
        redis_server.start()
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    return redis_server.url


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    """A sync client on the clean test server, replies decoded to str."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def sp_env(tmp_path: Path, redis_url: str) -> dict[str, str]:
    """Environment for CLI subprocesses: the test server, a private home, fast timings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMPROC_")}
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env.update(
        STREAMPROC_REDIS_URL=redis_url,
        STREAMPROC_HOME=str(home),
        STREAMPROC_PAYMENT_LATENCY_MS="0",
        STREAMPROC_CLAIM_IDLE_MS="2000",
        PYTHONUNBUFFERED="1",
    )
    return env
