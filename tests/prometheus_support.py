"""The PromQL of deploy/ (Grafana dashboard targets, alert rules) and a real Prometheus for tests.

How an alert rule is split for the end-to-end test: every rule in deploy/alerts.yml reads
`<series> <comparison> <threshold>`, possibly several such parts joined by and / or / unless.
`data_part` takes the left-most operand under the outermost comparison and set operators
(following PromQL's precedence: `or` lowest, then `and`/`unless`, then comparisons), repeatedly,
so `(A > 0) unless on (stage) (B > 0)` gives `A` and `X / Y > 0.05` gives `X / Y`. That operand
must return data on a healthy run even when the full expression (the alert condition) is empty.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.helpers import HOST, REPO_ROOT, free_port, stop_procs

DEPLOY = REPO_ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "streamproc.json"
ALERTS = DEPLOY / "alerts.yml"
PROMETHEUS_YML = DEPLOY / "prometheus.yml"
# What the tests put in place of Grafana's $__rate_interval (at least 4 scrapes at 1 s).
RATE_INTERVAL = "30s"
READY_TIMEOUT_S = 20.0
PORT_ATTEMPTS = 3

# Lowest precedence first; keywords are matched as whole words.
_SPLIT_LEVELS: tuple[tuple[str, ...], ...] = (
    ("or",),
    ("and", "unless"),
    ("==", "!=", ">=", "<=", ">", "<"),
)
_OPENERS, _CLOSERS = "([{", ")]}"
_WORD = re.compile(r"[A-Za-z0-9_:]")


@dataclass(frozen=True)
class Query:
    """One PromQL expression of deploy/ and where it comes from (for assertion messages)."""

    source: str
    expr: str


def tool(name: str) -> str:
    """Path of a Prometheus program; the test fails saying how to install it when missing."""
    found = shutil.which(name)
    if found is None:
        pytest.fail(
            f"{name} is not installed (scripts/install-tools; Debian: apt-get install prometheus)"
        )
    return found


def dashboard_panels(path: Path = DASHBOARD) -> list[dict[str, Any]]:
    """Every panel of the dashboard, those inside collapsed rows included."""
    found: list[dict[str, Any]] = []
    for panel in json.loads(path.read_text())["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def dashboard_queries(path: Path = DASHBOARD) -> list[Query]:
    """Every target expression of the dashboard, as written (Grafana variables included)."""
    return [
        Query(f"panel {panel['title']!r} {target['refId']}", target["expr"])
        for panel in dashboard_panels(path)
        for target in panel.get("targets", [])
    ]


def alert_rules(path: Path = ALERTS) -> list[Query]:
    """Every alert rule's expression, named by its alert."""
    groups = yaml.safe_load(path.read_text())["groups"]
    return [
        Query(f"alert {rule['alert']}", rule["expr"].strip())
        for group in groups
        for rule in group["rules"]
        if "alert" in rule
    ]


def grafana_to_promql(expr: str, rate_interval: str = RATE_INTERVAL) -> str:
    """The expression Grafana would send, with $__rate_interval replaced."""
    return expr.replace("$__rate_interval", rate_interval)


def _outside_strings(expr: str) -> Iterator[tuple[int, int]]:
    """(index, bracket depth after it) of every character of expr outside string literals."""
    depth, quote, escaped = 0, "", False
    for index, char in enumerate(expr):
        if quote:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = ""
            continue
        if char in "\"'`":
            quote = char
            continue
        if char in _OPENERS:
            depth += 1
        elif char in _CLOSERS:
            depth -= 1
        yield index, depth


def _top_level_operators(expr: str) -> list[tuple[int, str]]:
    """(index, operator) of every comparison or set operator outside brackets and strings."""
    symbols = [op for level in _SPLIT_LEVELS for op in level if not op.isalpha()]
    words = [op for level in _SPLIT_LEVELS for op in level if op.isalpha()]
    found: list[tuple[int, str]] = []
    next_free = 0  # the second character of `>=` is no operator of its own
    for index, depth in _outside_strings(expr):
        if depth != 0 or index < next_free or expr[index] in _CLOSERS:
            continue
        symbol = next((op for op in symbols if expr.startswith(op, index)), None)
        if symbol is not None:
            found.append((index, symbol))
            next_free = index + len(symbol)
            continue
        for word in words:
            end = index + len(word)
            if (
                expr.startswith(word, index)
                and not (index and _WORD.match(expr[index - 1]))
                and not _WORD.match(expr[end : end + 1] or " ")
            ):
                found.append((index, word))
                break
    return found


def _strip_parens(expr: str) -> str:
    """expr without parentheses that wrap all of it."""
    while expr.startswith("("):
        closing = next((index for index, depth in _outside_strings(expr) if depth == 0), -1)
        if closing != len(expr) - 1:
            break
        expr = expr[1:-1].strip()
    return expr


def data_part(expr: str) -> str:
    """The series an alert rule compares: the left-most operand under its outermost comparison
    and set operators (see the module docstring)."""
    expr = _strip_parens(expr.strip())
    operators = _top_level_operators(expr)
    for level in _SPLIT_LEVELS:
        cut = next((index for index, op in operators if op in level), None)
        if cut is not None:
            return data_part(expr[:cut])
    return expr


def adjusted_config(out_dir: Path, targets_file: Path, interval: str = "1s") -> Path:
    """deploy/prometheus.yml and its rule files copied to out_dir, with only the scrape and
    evaluation intervals and the file_sd path changed; the new config's path."""
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    config["global"].update(
        scrape_interval=interval, evaluation_interval=interval, scrape_timeout=interval
    )
    for job in config["scrape_configs"]:
        for key in ("scrape_interval", "scrape_timeout"):
            if key in job:
                job[key] = interval
        for sd in job.get("file_sd_configs", []):
            sd["files"] = [str(targets_file)]
    for rule_file in config.get("rule_files", []):
        shutil.copy(DEPLOY / rule_file, out_dir / rule_file)
    path = out_dir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class PrometheusServer:
    """The real `prometheus` binary on a free loopback port, with its own TSDB directory."""

    def __init__(self, config: Path, work_dir: Path) -> None:
        self.config = config
        self.work_dir = work_dir
        self.log_path = work_dir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.client = httpx.Client(timeout=10.0)

    def start(self) -> PrometheusServer:
        """Start it and wait until it is ready (a taken port is retried on another)."""
        binary = tool("prometheus")
        for _attempt in range(PORT_ATTEMPTS):
            port = free_port()
            self.url = f"http://{HOST}:{port}"
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    [
                        binary,
                        f"--config.file={self.config}",
                        f"--storage.tsdb.path={self.work_dir / 'data'}",
                        f"--web.listen-address={HOST}:{port}",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            if self._wait_ready():
                return self
            stop_procs([self.proc], timeout=10)
            if "address already in use" not in self.log():
                break
        raise RuntimeError(f"prometheus did not start:\n{self.log()[-3000:]}")

    def _wait_ready(self) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                if self.client.get(f"{self.url}/-/ready").status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        return False

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; the reply's JSON (errors included, with their status)."""
        return self.client.get(f"{self.url}/api/v1/{path}", params=params).json()

    def query(self, expr: str) -> dict[str, Any]:
        """An instant query now: {"status", "data": {"resultType", "result"}} or the error."""
        reply: dict[str, Any] = self.api("query", query=expr)
        return reply

    def log(self) -> str:
        """What prometheus printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """SIGTERM (it flushes its TSDB head) and wait; SIGKILL if it hangs."""
        if self.proc is not None:
            stop_procs([self.proc], timeout=10)
        self.client.close()
