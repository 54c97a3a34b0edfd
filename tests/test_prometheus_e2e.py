"""The real `prometheus` binary scrapes a real pipeline with deploy/prometheus.yml and
deploy/alerts.yml (only the intervals and the targets path changed); every PromQL expression of
the Grafana dashboard and of the alert rules must evaluate and return data (issue 7).

The processes are started by `streamproc up`: one consumer per stage, each with its own metrics
port, the API serving /metrics, and the file_sd targets file it writes into STREAMPROC_HOME,
which Prometheus reads.
The workload has payment declines (rollbacks), out-of-stock failures and a poisoned order that
is dead-lettered, so the dead-letter alert must actually fire.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from streamproc.keys import STAGES
from streamproc.models import STATES
from tests.helpers import HOST, free_port
from tests.invariants import write_products
from tests.proc_support import Up, free_port_block
from tests.prometheus_support import (
    PrometheusServer,
    Query,
    adjusted_config,
    alert_rules,
    dashboard_panels,
    dashboard_queries,
    data_part,
    grafana_to_promql,
)
from tests.support import cli, generated_orders, status_json

ORDERS = 3000
POISON = "G00042"  # every handler raises on it: dead-lettered by reserve, then by notify
DEAD_LETTER_ALERT = "StreamprocDeadLettersAppearing"
METRICS_TIMEOUT_S = 20.0
SCRAPE_TIMEOUT_S = 30.0
SETTLE_TIMEOUT_S = 40.0


@dataclass
class Stack:
    """`streamproc up` (every stage and the API) and the Prometheus scraping what it lists."""

    env: dict[str, str]
    up: Up
    api: httpx.Client
    prometheus: PrometheusServer
    targets: list[dict[str, Any]]  # the file_sd groups `up` wrote

    def consumer_logs(self) -> str:
        """What up and its children printed, for assertion messages."""
        return self.up.log()


def wait_metrics(url: str, up: Up) -> None:
    """Wait until url serves streamproc metrics; fail saying why if up exits first."""
    deadline = time.monotonic() + METRICS_TIMEOUT_S
    last = "no answer"
    while time.monotonic() < deadline:
        if up.proc.poll() is not None:
            pytest.fail(f"up exited {up.proc.returncode} before {url} answered:\n{up.log()}")
        try:
            reply = httpx.get(url, timeout=2.0)
            if reply.status_code == 200 and "streamproc_" in reply.text:
                return
            last = f"HTTP {reply.status_code}: {reply.text[:300]}"
        except httpx.TransportError as exc:
            last = repr(exc)
        time.sleep(0.2)
    pytest.fail(f"{url} never served streamproc metrics ({last})\n{up.log()}")


@pytest.fixture
def stack(sp_env: dict[str, str], tmp_path: Path) -> Iterator[Stack]:
    env = dict(
        sp_env,
        STREAMPROC_LOG_LEVEL="WARNING",
        STREAMPROC_PAYMENT_SEED="7",
        STREAMPROC_PAYMENT_SUCCESS_RATE="0.8",
        STREAMPROC_MAX_DELIVERIES="2",
    )
    api_port, metrics_base = free_port(), free_port_block(len(STAGES))
    with contextlib.ExitStack() as cleanup:
        # The fleet as a user runs it: `streamproc up` starts the stages and the API and writes
        # the file_sd targets file that deploy/prometheus.yml reads.
        up = Up(
            dict(env, STREAMPROC_FAULT_POISON=POISON),
            tmp_path / "up.log",
            "--port", str(api_port), "--metrics-port-base", str(metrics_base),
        )  # fmt: skip
        cleanup.callback(up.close)
        up.wait_ready({stage: 1 for stage in STAGES}, api_port)
        targets_path = Path(env["STREAMPROC_HOME"]) / "prometheus-targets.json"
        targets = json.loads(targets_path.read_text())
        for group in targets:
            for address in group["targets"]:
                wait_metrics(f"http://{address}/metrics", up)
        api = cleanup.enter_context(httpx.Client(base_url=f"http://{HOST}:{api_port}", timeout=10))
        prom_dir = tmp_path / "prometheus"
        prom_dir.mkdir()
        prometheus = PrometheusServer(adjusted_config(prom_dir, targets_path), prom_dir)
        cleanup.callback(prometheus.stop)
        prometheus.start()
        yield Stack(env, up, api, prometheus, targets)


def wait_targets_up(stack: Stack) -> None:
    """Every target of the targets file is scraped successfully."""
    expected = sum(len(group["targets"]) for group in stack.targets)
    assert expected == len(STAGES) + 1, stack.targets
    deadline = time.monotonic() + SCRAPE_TIMEOUT_S
    active: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        active = stack.prometheus.api("targets")["data"]["activeTargets"]
        if len(active) == expected and all(t["health"] == "up" for t in active):
            return
        time.sleep(0.25)
    found = [(t["labels"], t["health"], t.get("lastError")) for t in active]
    pytest.fail(f"{expected} targets not all up: {found}\n{stack.prometheus.log()[-2000:]}")


def run_workload(stack: Stack, tmp_path: Path) -> dict[str, int]:
    """Ingest ORDERS orders, use the API while they flow, wait until drained; orders by state."""
    env = stack.env
    orders_csv, catalogue = generated_orders(tmp_path / "orders.csv", ORDERS, seed=7)
    cli(["stock", "load", str(write_products(tmp_path / "products.csv", catalogue))], env)
    ingested = json.loads(cli(["ingest", str(orders_csv), "--json"], env).stdout)
    assert ingested["imported"] == ORDERS, ingested
    client = stack.api
    for path, status in [
        ("/api/streams", 200),
        ("/api/stats", 200),
        ("/api/health", 200),
        ("/api/orders/G00001", 200),
        ("/api/orders/no-such-order", 404),
        ("/no-such-page", 404),
    ]:
        assert client.get(path).status_code == status, path
    done = cli(["wait", "--timeout", "60"], env, check=False, timeout=90)
    assert done.returncode == 0, f"not drained: {done.stderr}\n{stack.consumer_logs()}"
    orders: dict[str, int] = status_json(env)["orders"]
    # The workload the dashboard must show: every kind of ending, a dead letter included.
    assert orders.get("dead_lettered") == 1, orders
    for state in ("completed", "failed", "rolled_back"):
        assert orders.get(state, 0) > 0, orders
    return orders


def query_problems(stack: Stack) -> list[str]:
    """What is still wrong: errors, expressions without data, unhealthy rules, no alert."""
    prometheus = stack.prometheus
    problems: list[str] = []

    def check(query: Query, expr: str, what: str) -> dict[str, Any]:
        reply = prometheus.query(expr)
        if reply.get("status") != "success":
            problems.append(f"{query.source} ({what}): {reply.get('error')}: {expr}")
        elif not reply["data"]["result"]:
            problems.append(f"{query.source} ({what}): no data: {expr}")
        return reply

    for query in dashboard_queries():
        check(query, grafana_to_promql(query.expr), "dashboard")
    for rule in alert_rules():
        full = prometheus.query(rule.expr)
        if full.get("status") != "success":
            problems.append(f"{rule.source}: {full.get('error')}")
        check(rule, data_part(rule.expr), "compared series")
        if rule.source == f"alert {DEAD_LETTER_ALERT}":
            check(rule, rule.expr, "full expression")
    for group in prometheus.api("rules")["data"]["groups"]:
        for rule in group["rules"]:
            if rule["health"] != "ok" or rule.get("lastError"):
                problems.append(
                    f"rule {rule['name']} in {group['name']}: health {rule['health']} "
                    f"{rule.get('lastError', '')}"
                )
    firing = {
        (alert["labels"]["alertname"], alert["labels"].get("stage"))
        for alert in prometheus.api("alerts")["data"]["alerts"]
        if alert["state"] == "firing"
    }
    if (DEAD_LETTER_ALERT, "reserve") not in firing:
        problems.append(f"{DEAD_LETTER_ALERT} is not firing for reserve; firing: {firing}")
    return problems


def test_every_dashboard_and_alert_query_returns_data(stack: Stack, tmp_path: Path) -> None:
    wait_targets_up(stack)
    orders = run_workload(stack, tmp_path)

    # Poll: rate windows need two scrapes after the last change, and rules a first evaluation.
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    problems = query_problems(stack)
    while problems and time.monotonic() < deadline:
        time.sleep(1)
        problems = query_problems(stack)
    assert not problems, "\n".join(problems)

    prometheus = stack.prometheus
    # The orders-by-status panel shows what Redis holds.
    (by_status,) = [
        target["expr"]
        for panel in dashboard_panels()
        if panel["title"] == "Orders by status"
        for target in panel["targets"]
    ]
    shown = {
        sample["metric"]["state"]: int(float(sample["value"][1]))
        for sample in prometheus.query(by_status)["data"]["result"]
    }
    assert {k: v for k, v in shown.items() if v} == {
        state: count for state, count in orders.items() if count and state in STATES
    }
    # The targets file's `stage` is renamed (process_stage): the metrics keep their own label.
    clashes = prometheus.query('{__name__=~"streamproc_.+", exported_stage!=""}')
    assert clashes["data"]["result"] == [], clashes
