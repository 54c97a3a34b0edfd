"""A live `streamproc api` (uvicorn) process for tests, on a free loopback port."""

from __future__ import annotations

import subprocess
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
from schemathesis import HookContext
from schemathesis.schemas import BaseSchema

from api.handlers.kpis import MAX_RANGE_DAYS
from tests.helpers import free_port, spawn_cli, stop_procs

TOKEN = "test-token-0123456789abcdef"  # noqa: S105 - a test-only credential
READY_TIMEOUT_S = 20.0


class LiveApi:
    """One API server process; `client` talks to it over real HTTP."""

    def __init__(
        self, env: dict[str, str], log_path: Path, token: str | None = TOKEN, workers: int = 1
    ) -> None:
        self.env = dict(env)
        if token is None:
            self.env.pop("STREAMPROC_API_TOKEN", None)
        else:
            self.env["STREAMPROC_API_TOKEN"] = token
        self.token = token
        self.workers = workers
        self.log_path = log_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.client = httpx.Client(base_url=self.url, timeout=10.0)

    def start(self) -> LiveApi:
        """Spawn the server and wait until it answers."""
        self.proc = spawn_cli(
            [
                "api",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                str(self.workers),
            ],
            self.env,
            log_path=self.log_path,
        )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"api exited {self.proc.returncode}:\n{self.log()}")
            try:
                if self.client.get("/openapi.json").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"api did not become ready:\n{self.log()}")

    def auth(self) -> dict[str, str]:
        """The Authorization header carrying the configured token."""
        return {"Authorization": f"Bearer {self.token}"}

    def log(self) -> str:
        """What the server printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> int:
        """SIGTERM (uvicorn runs the lifespan shutdown); the exit code."""
        self.client.close()
        if self.proc is None:
            return 0
        return stop_procs([self.proc])[0]


def in_bounds(query: dict[str, Any] | None) -> dict[str, Any] | None:
    """A /api/kpis/range query with its two dates (when both are dates) in order and at most
    MAX_RANGE_DAYS apart: the one rule of that operation its schema cannot state."""
    if not query:
        return query
    try:
        start = date.fromisoformat(query["start_date"])
        end = date.fromisoformat(query["end_date"])
    except (KeyError, TypeError, ValueError):
        return query  # a missing or malformed date: the case is about that, leave it
    start, end = min(start, end), max(start, end)
    end = min(end, start + timedelta(days=MAX_RANGE_DAYS - 1))
    return {**query, "start_date": start.isoformat(), "end_date": end.isoformat()}


def dates_in_order(query: dict[str, Any] | None) -> dict[str, Any] | None:
    """A /api/notifications query with from_date and to_date (when both are dates) in order."""
    if not query:
        return query
    try:
        start = date.fromisoformat(query["from_date"])
        end = date.fromisoformat(query["to_date"])
    except (KeyError, TypeError, ValueError):
        return query
    return {
        **query,
        "from_date": min(start, end).isoformat(),
        "to_date": max(start, end).isoformat(),
    }


def keep_ranges_in_bounds(schema: BaseSchema) -> None:
    """Have schemathesis generate /api/kpis/range and /api/notifications queries that respect
    their cross-field rules, so a schema-valid range is a valid one (reversed and too-long ranges:
    test_api_analytics, test_notify_api)."""

    def map_query(context: HookContext, query: dict[str, Any] | None) -> dict[str, Any] | None:
        return in_bounds(query)

    def map_notifications(
        context: HookContext, query: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        return dates_in_order(query)

    register: Any = schema.hook("map_query")  # schemathesis types hooks as plain callables
    register.apply_to(path="/api/kpis/range")(map_query)
    register_notifications: Any = schema.hook("map_query")
    register_notifications.apply_to(path="/api/notifications")(map_notifications)
