"""Prometheus metrics of real processes: two `consume --stage all --metrics-port` and the API.

A workload with completions, out-of-stock failures, declined payments (rollbacks), a poisoned
order (dead-lettered at reserve, then at notify), rejected rows and a second import of the same
file (duplicates) runs through real consumer processes. Their counters and histograms must add up
to what the orders became (`orders export`), the API's scrape-time gauges must equal
`streamproc status --json`, and promtool must find nothing wrong with any exposition.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from streamproc.keys import STAGES
from streamproc.metrics import SNAPSHOTTED
from streamproc.workflow import DRAIN_ONLY
from tests.api_support import LiveApi
from tests.helpers import HOST, ServerHandle, free_port, run_cli, spawn_cli, stop_procs
from tests.metrics_support import (
    CLASSIC_TEXT,
    SampleKey,
    parse,
    promtool_check,
    scrape,
    total,
    value,
)
from tests.support import (
    KEYS,
    cli,
    export,
    generated_orders,
    status_json,
    wait_consumers_registered,
)

ORDERS = 150
POISON = "G00007"  # every stage raises on it: dead-lettered at reserve, then at notify
BAD_ROWS = [
    "BAD-1,not-a-number,Someone,SKU-G05,Item,1,1.00,USD,2025-11-10",
    "BAD-2,5,Someone,SKU-G05,Item,0,1.00,USD,2025-11-10",
]


@dataclass
class Workload:
    """What the run left: per-process consumer scrapes, the orders, the imports' summaries."""

    env: dict[str, str]
    consumer_texts: list[str]
    consumers: list[dict[SampleKey, float]]
    orders: dict[str, dict[str, Any]]
    imports: list[dict[str, Any]]
    started: float


@pytest.fixture
def workload(sp_env: dict[str, str], tmp_path: Path) -> Iterator[Workload]:
    env = dict(
        sp_env,
        STREAMPROC_LOG_LEVEL="WARNING",
        STREAMPROC_PAYMENT_SEED="3",
        STREAMPROC_PAYMENT_SUCCESS_RATE="0.7",
        STREAMPROC_MAX_DELIVERIES="2",
        STREAMPROC_CLAIM_IDLE_MS="600",  # the poisoned order's second delivery comes sooner
    )
    started = time.time()
    path, catalogue = generated_orders(tmp_path / "orders.csv", ORDERS, seed=7)
    with path.open("a") as handle:
        handle.write("\n".join(BAD_ROWS) + "\n")
    for sku, units in catalogue.items():
        # Three SKUs nearly sold out: orders for them fail at reserve.
        cli(["stock", "set", sku, str(min(units, 4))], env)
    imports = []
    for _ in range(2):  # the second import: every order a duplicate
        done = run_cli(["ingest", str(path), "--json"], env)
        assert done.returncode == 1, done.stderr  # some rows rejected
        imports.append(json.loads(done.stdout))
    ports = [free_port(), free_port()]
    consumer_env = dict(env, STREAMPROC_FAULT_POISON=POISON)
    procs = [
        spawn_cli(
            ["consume", "--stage", "all", "--metrics-port", str(ports[0])],
            consumer_env,
            log_path=tmp_path / "consume-0.log",
        ),
        # The port from the environment, as a supervisor would give it.
        spawn_cli(
            ["consume", "--stage", "all"],
            dict(consumer_env, STREAMPROC_METRICS_PORT=str(ports[1])),
            log_path=tmp_path / "consume-1.log",
        ),
    ]

    def logs() -> str:
        return "\n".join(p.read_text()[-3000:] for p in sorted(tmp_path.glob("consume-*.log")))

    try:
        for stage in STAGES:
            wait_consumers_registered(env, stage, 2, logs)
        done = run_cli(["wait", "--timeout", "60"], env, timeout=90)
        assert done.returncode == 0, f"not drained: {done.stderr}\n{logs()}"
        texts = [scrape(f"http://{HOST}:{port}/metrics") for port in ports]
    finally:
        codes = stop_procs(procs)
    assert codes == [0, 0], f"consumer exit codes {codes}\n{logs()}"
    yield Workload(env, texts, [parse(t) for t in texts], export(env), imports, started)


def test_consumer_metrics_add_up_to_what_the_orders_became(workload: Workload) -> None:
    states = Counter(order["state"] for order in workload.orders.values())
    assert len(workload.orders) == ORDERS
    # The workload has every kind of outcome.
    assert states["completed"] and states["failed"] and states["rolled_back"], states
    assert states["dead_lettered"] == 1 and workload.orders[POISON]["state"] == "dead_lettered"
    completed, failed, rolled_back = states["completed"], states["failed"], states["rolled_back"]
    scrapes = workload.consumers

    def messages(stage: str, outcome: str) -> float:
        return total(scrapes, "streamproc_stage_messages_total", stage=stage, outcome=outcome)

    # Every message settled once with its workflow outcome (stale ones: replays, acked only).
    assert messages("reserve", "reserved") == completed + rolled_back
    assert messages("reserve", "failed") == failed
    # The payment stage settles what it charges: nothing reaches finalize or rollback.
    assert messages("payment", "completed") == completed
    assert messages("payment", "rolled_back") == rolled_back
    assert messages("finalize", "completed") == 0
    assert messages("rollback", "rolled_back") == 0
    assert messages("notify", "notified") == ORDERS - 1  # the poisoned one is dead-lettered
    assert messages("snapshot", SNAPSHOTTED) == ORDERS
    for stage, count in (("reserve", 1), ("notify", 1), ("payment", 0), ("finalize", 0)):
        assert total(scrapes, "streamproc_dead_letters_total", stage=stage) == count, stage
    # The poisoned order failed once before its last delivery, and was reclaimed to get it.
    assert total(scrapes, "streamproc_stage_retries_total", stage="reserve") >= 1
    assert total(scrapes, "streamproc_stage_reclaimed_total", stage="reserve") >= 1

    # End-to-end latency: one observation per order reaching each terminal state.
    elapsed_s = time.time() - workload.started
    for outcome, count in states.items():
        observed = total(scrapes, "streamproc_order_latency_seconds_count", outcome=outcome)
        assert observed == count, outcome
        seconds = total(scrapes, "streamproc_order_latency_seconds_sum", outcome=outcome)
        assert 0 < seconds <= count * elapsed_s, (outcome, seconds)
    bucket = "streamproc_order_latency_seconds_bucket"
    assert total(scrapes, bucket, outcome="completed", le="600.0") == completed

    # Payments and their gateway calls; notifications; revenue of the completions.
    assert total(scrapes, "streamproc_payments_total", outcome="succeeded") == completed
    assert total(scrapes, "streamproc_payments_total", outcome="declined") == rolled_back
    assert total(scrapes, "streamproc_payments_total", outcome="error") == 0
    calls = total(scrapes, "streamproc_payment_gateway_seconds_count")
    assert 1 <= calls <= completed + rolled_back
    sent = total(scrapes, "streamproc_notifications_total", channel="log", status="sent")
    assert sent == ORDERS - 1
    assert total(scrapes, "streamproc_notifications_total", channel="log", status="failed") == 0
    cents = sum(o["total_cents"] for o in workload.orders.values() if o["state"] == "completed")
    revenue = total(scrapes, "streamproc_completed_revenue_total", currency="USD")
    assert revenue == pytest.approx(cents / 100)

    # One processing-time observation per batch: at least one per stage, fewer than messages;
    # none in the stages that only drain what earlier versions left.
    for stage in STAGES:
        batches = total(scrapes, "streamproc_stage_processing_seconds_count", stage=stage)
        assert (batches == 0) if stage in DRAIN_ONLY else (batches >= 1), stage
        assert total(scrapes, "streamproc_stage_in_flight", stage=stage) == 0
    assert total(scrapes, "streamproc_stage_processing_seconds_count", stage="reserve") < ORDERS
    # The process's own metrics are there too, and promtool finds nothing to report.
    for samples, text in zip(scrapes, workload.consumer_texts, strict=True):
        assert value(samples, "process_cpu_seconds_total") > 0
        assert any(name == "python_info" for name, _ in samples)
        promtool_check(text)


def test_stage_windows_hold_what_the_consumers_counted(workload: Workload, r: redis.Redis) -> None:
    # Each consumer flushed its counts (the last time while stopping): the windows of the run
    # add up to the counters scraped just before the stop.
    keys = list(r.scan_iter(match=KEYS.stage_window(0).removesuffix("0") + "*"))
    assert keys
    assert all(0 < r.ttl(key) <= 300 for key in keys)
    windows = [r.hgetall(key) for key in keys]
    for stage in STAGES:
        in_windows = sum(int(w.get(f"{stage}:n", 0)) for w in windows)
        counted = sum(
            v
            for s in workload.consumers
            for (name, labels), v in s.items()
            if name == "streamproc_stage_messages_total" and ("stage", stage) in labels
        )
        assert in_windows == counted, stage
        batches = sum(int(w.get(f"{stage}:le:+Inf", 0)) for w in windows)
        count = "streamproc_stage_processing_seconds_count"
        assert batches == total(workload.consumers, count, stage=stage), stage


def test_api_metrics_match_status_and_the_imports(workload: Workload, tmp_path: Path) -> None:
    api = LiveApi(workload.env, tmp_path / "api.log").start()
    try:
        some = sorted(workload.orders)[:3]
        for order_id in some:
            assert api.client.get(f"/api/orders/{order_id}").status_code == 200
        assert api.client.get("/api/orders/NO-SUCH-ORDER").status_code == 404
        assert api.client.get("/not/a/route").status_code == 404
        assert api.client.post("/api/stats").status_code == 405
        streams = api.client.get("/api/streams").json()["data"]
        text = scrape(f"{api.url}/metrics")
        status = status_json(workload.env)
    finally:
        assert api.stop() == 0

    promtool_check(text)
    samples = parse(text)
    assert value(samples, "streamproc_redis_up") == 1
    for stage in STAGES:
        expected = status["stages"][stage]
        for metric, field in (
            ("streamproc_stream_length", "length"),
            ("streamproc_stream_lag", "lag"),
            ("streamproc_stream_pending", "pending"),
            ("streamproc_stream_consumers", "consumers"),
        ):
            assert value(samples, metric, stage=stage) == expected[field], (metric, stage)
        age = value(samples, "streamproc_stream_oldest_pending_age_seconds", stage=stage)
        assert age == expected["oldest_pending_ms"] / 1000 == 0
    assert value(samples, "streamproc_dead_letter_stream_length") == status["dead_letters"] == 2
    for state, count in status["orders"].items():
        if state != "total":
            assert value(samples, "streamproc_orders", state=state) == count, state
    cents = sum(o["total_cents"] for o in workload.orders.values() if o["state"] == "completed")
    assert value(samples, "streamproc_revenue_today", currency="USD") == pytest.approx(cents / 100)

    # Ingest rows: every row of both imports, by what became of it.
    first, second = workload.imports
    rows = {
        outcome: value(samples, "streamproc_ingest_rows_total", outcome=outcome)
        for outcome in ("imported", "duplicate", "rejected")
    }
    assert sum(rows.values()) == first["rows"] + second["rows"]
    assert rows["rejected"] == first["rejected"] + second["rejected"] == 2 * len(BAD_ROWS)
    good_rows = first["rows"] - first["rejected"]
    assert rows == {"imported": good_rows, "duplicate": good_rows, "rejected": 2 * len(BAD_ROWS)}
    assert (first["imported"], second["duplicates"]) == (ORDERS, ORDERS)

    # HTTP requests by route template, method and status, with their latency.
    order_route = {"route": "/api/orders/{order_id}", "method": "GET"}
    requests = "streamproc_http_requests_total"
    assert value(samples, requests, **order_route, status="200") == len(some)
    assert value(samples, requests, **order_route, status="404") == 1
    assert value(samples, requests, route="other", method="GET", status="404") == 1
    assert value(samples, requests, route="/api/stats", method="POST", status="405") == 1
    durations = "streamproc_http_request_duration_seconds_count"
    assert value(samples, durations, **order_route) == len(some) + 1
    assert value(samples, "streamproc_http_request_duration_seconds_sum", **order_route) > 0
    assert value(samples, "process_resident_memory_bytes") > 0

    # The dashboard's figures: every stage worked during the last minute (but those that only
    # drain what earlier versions left).
    for stage in streams["stages"]:
        if stage["stage"] in DRAIN_ONLY:
            assert (stage["processed_per_s"], stage["p95_seconds"]) == (0, None), stage
            continue
        assert stage["processed_per_s"] > 0, stage
        assert stage["p95_seconds"] is not None and stage["p95_seconds"] > 0, stage


def test_metrics_answer_while_redis_is_frozen(
    sp_env: dict[str, str], redis_server: ServerHandle, tmp_path: Path
) -> None:
    api = LiveApi(sp_env, tmp_path / "api.log").start()
    try:
        before = parse(scrape(f"{api.url}/metrics"))
        assert value(before, "streamproc_redis_up") == 1
        assert value(before, "streamproc_stream_length", stage="reserve") == 0
        redis_server.pause()
        try:
            started = time.monotonic()
            text = scrape(f"{api.url}/metrics")
            took = time.monotonic() - started
        finally:
            redis_server.resume()
        frozen = parse(text)
        assert value(frozen, "streamproc_redis_up") == 0
        assert not any(name.startswith("streamproc_stream_") for name, _ in frozen)
        assert value(frozen, "process_cpu_seconds_total") > 0  # the rest is still there
        assert took < 2.0, took  # the deadline (500 ms), not the frozen server, sets the time
        promtool_check(text)
        assert value(parse(scrape(f"{api.url}/metrics")), "streamproc_redis_up") == 1
    finally:
        assert api.stop() == 0


def test_api_workers_share_one_multiprocess_directory(
    sp_env: dict[str, str], tmp_path: Path
) -> None:
    api = LiveApi(sp_env, tmp_path / "api.log", workers=2).start()
    try:
        # A new connection per request, until both workers (request id prefixes) have answered.
        workers: set[str] = set()
        sent = 0
        while len(workers) < 2 or sent < 20:
            assert sent < 400, f"one worker answered every request: {workers}"
            response = httpx.get(f"{api.url}/api/stats", timeout=10)
            assert response.status_code == 200
            workers.add(response.headers["x-request-id"].split("-")[0])
            sent += 1
        text = scrape(f"{api.url}/metrics")
        samples = parse(text)
        stats = {"route": "/api/stats", "method": "GET", "status": "200"}
        # Every request counted, whichever worker answered it and whichever answers the scrape.
        assert value(samples, "streamproc_http_requests_total", **stats) == sent
        again = parse(scrape(f"{api.url}/metrics"))
        assert value(again, "streamproc_redis_up") == 1
        promtool_check(text)
        match = re.search(r"metrics of 2 workers collected in (\S+)", api.log())
        assert match, api.log()
        directory = Path(match.group(1))
        assert len(list(directory.glob("counter_*.db"))) == 2  # one file per worker
    finally:
        assert api.stop() == 0
    assert not directory.exists()  # removed when the API stops


def test_a_taken_metrics_port_is_a_clear_error(sp_env: dict[str, str]) -> None:
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli(["consume", "--stage", "reserve", "--metrics-port", str(port)], sp_env)
    assert done.returncode == 2, done.stderr
    assert f"metrics port {port} on 127.0.0.1 is already in use" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_metrics_is_outside_the_api_schema(sp_env: dict[str, str], tmp_path: Path) -> None:
    api = LiveApi(sp_env, tmp_path / "api.log").start()
    try:
        paths = api.client.get("/openapi.json").json()["paths"]
        assert "/metrics" not in paths and all(p.startswith("/api/") for p in paths)
        response = api.client.get("/metrics")
        assert response.headers["content-type"] == CLASSIC_TEXT
        assert not response.text.startswith("{")
        assert api.client.get("/metrics?token=x").status_code == 200  # no auth on a scrape
    finally:
        assert api.stop() == 0
