"""STREAMPROC_LOG_FORMAT=json: one JSON object per line from every process (CLI, consumers, the
API and uvicorn), and clear errors for bad log settings."""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from streamproc.errors import ConfigError
from streamproc.keys import STAGES
from streamproc.logs import JsonFormatter, LogConfig
from tests.helpers import HOST, REPO_ROOT, free_port
from tests.proc_support import GRACE_S, HAS_PROC, STOP_MARGIN_S, Up, wait_gone
from tests.support import cli

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def _record(exc_info: Any = None, extra: dict[str, Any] | None = None) -> logging.LogRecord:
    logger = logging.getLogger("streamproc.test")
    args = ("it", "wrong")
    return logger.makeRecord(
        logger.name, logging.WARNING, __file__, 1, "%s went %s", args, exc_info, extra=extra
    )


def test_json_formatter_writes_the_core_fields_and_extras() -> None:
    record = _record(extra={"order_id": "A-1", "path": Path("/x"), "ts": "mine"})
    record.created = 1_762_763_400.1234  # 2025-11-10 08:30:00.123 UTC
    line = JsonFormatter().format(record)
    assert "\n" not in line
    fields = json.loads(line)
    assert list(fields)[:4] == ["ts", "level", "logger", "message"]
    assert fields["ts"] == "2025-11-10T08:30:00.123Z"
    assert fields["level"] == "WARNING"
    assert fields["logger"] == "streamproc.test"
    assert fields["message"] == "it went wrong"
    assert fields["order_id"] == "A-1"
    assert fields["path"] == "/x"  # not JSON: written as its str()
    assert "exception" not in fields
    assert set(fields) == {"ts", "level", "logger", "message", "order_id", "path"}


def test_json_formatter_keeps_the_traceback_on_one_line() -> None:
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        record = _record(exc_info=sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line
    fields = json.loads(line)
    assert fields["exception"].startswith("Traceback (most recent call last):")
    assert fields["exception"].endswith("ValueError: bad\nvalue")


def test_log_config_reads_and_validates_the_environment() -> None:
    assert LogConfig.from_env({}) == LogConfig("INFO", "text")
    assert LogConfig.from_env({"STREAMPROC_LOG_FORMAT": " JSON ", "STREAMPROC_LOG_LEVEL": "debug"})
    assert LogConfig.from_env({"STREAMPROC_LOG_FORMAT": "json"}).json
    with pytest.raises(ConfigError, match=r"STREAMPROC_LOG_FORMAT='yaml': use text or json"):
        LogConfig.from_env({"STREAMPROC_LOG_FORMAT": "yaml"})
    with pytest.raises(ConfigError, match=r"STREAMPROC_LOG_LEVEL='LOUD': use DEBUG, INFO"):
        LogConfig.from_env({"STREAMPROC_LOG_LEVEL": "loud"})


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("STREAMPROC_LOG_FORMAT", "xml", "STREAMPROC_LOG_FORMAT='xml': use text or json"),
        (
            "STREAMPROC_LOG_LEVEL",
            "chatty",
            "STREAMPROC_LOG_LEVEL='CHATTY': use DEBUG, INFO, WARNING, ERROR or CRITICAL",
        ),
    ],
)
def test_a_bad_log_setting_stops_any_command_with_one_line(
    sp_env: dict[str, str], name: str, value: str, message: str
) -> None:
    done = cli(["status"], dict(sp_env, **{name: value}), check=False)
    assert done.returncode == 2
    assert done.stderr == f"streamproc: {message}\n"


def test_cli_errors_are_json_lines_too(sp_env: dict[str, str]) -> None:
    port = free_port()  # nothing listens there
    env = dict(sp_env, STREAMPROC_LOG_FORMAT="json", STREAMPROC_REDIS_URL=f"redis://{HOST}:{port}")
    done = cli(["status"], env, check=False)
    assert done.returncode == 3
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert [(r["level"], r["logger"]) for r in lines] == [
        ("INFO", "streamproc.cli"),
        ("ERROR", "streamproc.cli"),
    ]
    assert lines[0]["message"].startswith(f"using redis://{HOST}:{port}/0")
    assert lines[1]["message"] == f"cannot reach Redis at {HOST}:{port}: Connection refused"


@pytest.mark.skipif(not HAS_PROC, reason="reads process trees from /proc")
def test_up_consumers_and_api_log_only_json_lines(sp_env: dict[str, str], tmp_path: Path) -> None:
    env = dict(sp_env, STREAMPROC_LOG_FORMAT="json", STREAMPROC_PAYMENT_SUCCESS_RATE="1.0")
    api_port = free_port()
    up = Up(env, tmp_path / "up.log", "--port", str(api_port), "--metrics-port-base", "0")
    try:
        up.wait_ready(dict.fromkeys(STAGES, 1), api_port)
        cli(["ingest", str(REPO_ROOT / "sample.csv")], env)
        cli(["wait", "--timeout", "60"], env, timeout=90)
        headers = {"X-Request-ID": "json-probe-1"}
        url = f"http://{HOST}:{api_port}/api/orders/nope"
        assert httpx.get(url, headers=headers, timeout=5).status_code == 404
        tree = up.tree()
        up.ctrl_c()
        assert up.wait(GRACE_S + STOP_MARGIN_S + 5) == 0
        assert wait_gone(tree, 2) == set()
    finally:
        up.close()
    records = []
    for line in up.log_path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}")
    for record in records:
        assert TS.match(record["ts"]), record
        assert record["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), record
        assert record["logger"] and isinstance(record["message"], str), record
    # Every child wrote JSON itself: up never had to wrap a plain line.
    assert not [r for r in records if r["logger"] == "streamproc.up.output"]
    by_child: dict[str, set[str]] = {}
    for record in records:
        if "child" in record and record["logger"] != "streamproc.up":
            by_child.setdefault(record["child"], set()).add(record["logger"])
    assert set(by_child) == {f"{stage}.1" for stage in STAGES} | {"api"}, by_child
    assert {"uvicorn.error", "streamproc.api", "streamproc.cli"} <= by_child["api"]
    assert "streamproc.worker" in by_child["payment.1"]
    (request,) = [r for r in records if r.get("request_id") == "json-probe-1"]
    assert request["child"] == "api" and request["logger"] == "streamproc.api"
    facts = (request["method"], request["path"], request["status"])
    assert facts == ("GET", "/api/orders/nope", 404)
    assert isinstance(request["duration_ms"], float)
    banner = next(r for r in records if r["message"].startswith("streamproc up: starting"))
    assert banner["api"] == f"http://{HOST}:{api_port}/api"
    assert banner["dashboard"] == f"http://{HOST}:{api_port}/dashboard"
    assert not any("color_message" in r for r in records)
