"""The analytics endpoints (SPEC §7) through a live `streamproc api` process and a real pipeline.

sample.csv with every payment succeeding gives the original app's figures (shared/NOTES.md);
KPIs come from the snapshot store (cached per snapshot version, invalidated by the next one),
realtime figures and leaderboards are live. Every response passes test_api_live's guard
(request id, JSON, error envelope, no internal detail).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest
import redis

from api.routes import ENDPOINTS, KPI_DEADLINE_MS, REBUILD_DEADLINE_MS
from streamproc.analytics.store import FileInfo, encode_info
from streamproc.keys import STAGES
from streamproc.settings import Settings
from tests import test_api_live
from tests.api_support import TOKEN, LiveApi
from tests.helpers import REPO_ROOT, ServerHandle, stop_procs
from tests.support import KEYS, Pipeline, cli, write_orders
from tests.test_api_live import (
    DOWN_BUDGET_S,
    UNAVAILABLE,
    assert_money_text,
    error,
    field_errors,
    ok,
    raw_number,
    timed,
    today,
)

# The API-process fixture of test_api_live (guarded clients, clean SIGTERM exit checked).
apis = test_api_live.apis

SAMPLE = REPO_ROOT / "sample.csv"
PRODUCTS = REPO_ROOT / "products.csv"
DATE_MESSAGE = "must be a calendar date as YYYY-MM-DD"
LIMIT_MESSAGE = "must be an integer from 1 to 500"
CURRENCY_MESSAGE = "must be a 3-letter ISO 4217 code"
# sample.csv by customer: total spent (cents) and orders; the board ranks them by total spent.
CUSTOMER_BOARD = [
    (505, "David Johnson", 1, "259.98"),
    (501, "John Doe", 2, "250.00"),
    (503, "Michael Brown", 2, "224.99"),
    (507, "Robert King", 1, "99.98"),
    (502, "Jane Smith", 1, "79.99"),
    (508, "Linda Martinez", 1, "75.00"),
    (504, "Sarah Wilson", 1, "49.99"),
    (506, "Emily Davis", 1, "25.50"),
]
# By units sold; equal counts rank by SKU descending (Redis ZREVRANGE order).
PRODUCT_BOARD = [
    ("SKU-002", "USB-C Charger", 8, "120.00", 2),
    ("SKU-004", "HD Webcam", 3, "149.97", 2),
    ("SKU-001", "Wireless Mouse", 3, "76.50", 2),
    ("SKU-005", "External SSD 1TB", 2, "259.98", 1),
    ("SKU-007", "Portable Monitor", 1, "179.99", 1),
    ("SKU-006", "Noise Cancelling Headphones", 1, "199.00", 1),
    ("SKU-003", "Mechanical Keyboard", 1, "79.99", 1),
]
MONEY_FIELDS = ("total_revenue", "average_order_value")
BIG_CUSTOMERS = 100_000


@pytest.fixture
def sample_env(sp_env: dict[str, str]) -> dict[str, str]:
    """Every payment succeeds; snapshots land every 200 ms."""
    return dict(
        sp_env,
        STREAMPROC_PAYMENT_SUCCESS_RATE="1.0",
        STREAMPROC_PAYMENT_SEED="5",
        STREAMPROC_SNAPSHOT_INTERVAL_MS="200",
    )


@pytest.fixture
def pipeline(sample_env: dict[str, str], tmp_path: Path) -> Iterator[Pipeline]:
    """One `consume --stage all` (snapshot stage included), stopped at teardown."""
    log_dir = tmp_path / "consumers"
    log_dir.mkdir()
    running = Pipeline(sample_env, log_dir)
    running.start("all")
    for stage in STAGES:
        running.wait_registered(stage, 1)
    yield running
    codes = stop_procs(running.procs)
    assert codes == [0] * len(codes), f"consumer exit codes {codes}\n{running.logs()}"


def wait_until(what: str, probe: Callable[[], Any], timeout_s: float = 20.0) -> Any:
    """Poll `probe` until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def kpi_figures(data: dict[str, Any]) -> tuple[Any, ...]:
    """The figures of a day or a range, money as cents (exact)."""
    return (
        round(data["total_revenue"] * 100),
        data["order_count"],
        round(data["average_order_value"] * 100),
        data["unique_customers"],
        data["items_sold"],
        data["failed_count"],
    )


def test_sample_kpis_leaderboards_cache_and_rebuild(
    apis: Callable[..., LiveApi],
    pipeline: Pipeline,
    sample_env: dict[str, str],
    r: redis.Redis,
    tmp_path: Path,
) -> None:
    env = sample_env
    cli(["stock", "load", str(PRODUCTS)], env)
    cli(["ingest", str(SAMPLE)], env)
    cli(["wait", "--timeout", "30"], env, timeout=60)
    api = apis(env)
    client = api.client

    # Daily KPIs (the original's figures), with money as two-decimal numbers.
    first = client.get("/api/kpis/daily", params={"date": "2025-11-10"})
    day10 = ok(first)
    assert (day10["date"], day10["currency"], day10["cached"]) == ("2025-11-10", "USD", False)
    assert kpi_figures(day10) == (48596, 5, 9719, 5, 9, 0)
    assert raw_number(first.text, "total_revenue") == "485.96"
    assert raw_number(first.text, "average_order_value") == "97.19"
    version = day10["snapshot_version"]
    assert isinstance(version, int) and version >= 1
    # The same question again is answered from the cache of that snapshot.
    again = ok(client.get("/api/kpis/daily", params={"date": "2025-11-10"}))
    assert again == {**day10, "cached": True}
    day11 = ok(client.get("/api/kpis/daily", params={"date": "2025-11-11", "currency": "usd"}))
    assert (day11["date"], day11["currency"]) == ("2025-11-11", "USD")
    assert kpi_figures(day11) == (57947, 5, 11589, 5, 10, 0)
    # No date: today (UTC), when nothing was ordered.
    now = ok(client.get("/api/kpis/daily"))
    assert (now["date"], kpi_figures(now)) == (today(), (0, 0, 0, 0, 0, 0))

    # A range: totals over both days (8 distinct customers, not 5 + 5) and each day listed.
    response = client.get(
        "/api/kpis/range", params={"start_date": "2025-11-10", "end_date": "2025-11-11"}
    )
    both = ok(response)
    assert (both["start_date"], both["end_date"], both["currency"]) == (
        "2025-11-10",
        "2025-11-11",
        "USD",
    )
    assert kpi_figures(both) == (106543, 10, 10654, 8, 19, 0)
    assert raw_number(response.text, "average_order_value") == "106.54"
    assert_money_text(response.text, *MONEY_FIELDS)
    assert [d["date"] for d in both["days"]] == ["2025-11-10", "2025-11-11"]
    for listed, single in zip(both["days"], (day10, day11), strict=True):
        assert kpi_figures(listed) == kpi_figures(single)
    assert both["snapshot_version"] == version and both["cached"] is False
    # Days with no order are listed with zeros; another currency has nothing.
    wide = ok(client.get("/api/kpis/range?start_date=2025-11-09&end_date=2025-11-12"))
    assert [d["date"] for d in wide["days"]] == [
        "2025-11-09",
        "2025-11-10",
        "2025-11-11",
        "2025-11-12",
    ]
    assert kpi_figures(wide["days"][0]) == kpi_figures(wide["days"][3]) == (0, 0, 0, 0, 0, 0)
    assert kpi_figures(wide) == kpi_figures(both)
    euro = client.get("/api/kpis/range?start_date=2025-11-10&end_date=2025-11-11&currency=eur")
    assert ok(euro)["currency"] == "EUR" and kpi_figures(ok(euro))[:2] == (0, 0)
    assert '"total_revenue":0.00' in euro.text

    # Customers: figures and rank by total spent.
    c505 = ok(client.get("/api/customers/505"))
    assert c505["customer_name"] == "David Johnson" and c505["currency"] == "USD"
    assert (c505["order_count"], c505["total_spent"], c505["average_order_value"]) == (
        1,
        259.98,
        259.98,
    )
    assert c505["first_order"].startswith("2025-11-10") and c505["rank"] == 1
    assert c505["last_order"] == c505["first_order"]
    response = client.get("/api/customers/501")
    c501 = ok(response)
    assert (c501["customer_id"], c501["customer_name"], c501["rank"]) == (501, "John Doe", 2)
    assert (c501["order_count"], c501["total_spent"], c501["average_order_value"]) == (2, 250, 125)
    assert raw_number(response.text, "total_spent") == "250.00"
    assert c501["first_order"].startswith("2025-11-10")
    assert c501["last_order"].startswith("2025-11-11")
    for customer_id, rank in ((505, 1), (501, 2), (506, 8)):
        standing = ok(client.get(f"/api/leaderboard/customers/{customer_id}/rank"))
        assert (standing["customer_id"], standing["rank"]) == (customer_id, rank)
        assert standing["customers_ranked"] == 8
    rank501 = ok(client.get("/api/leaderboard/customers/501/rank"))
    assert (rank501["total_spent"], rank501["order_count"]) == (250, 2)
    error(client.get("/api/customers/501", params={"currency": "EUR"}), 404)

    # The boards, whole and cut by limit.
    response = client.get("/api/leaderboard/customers", params={"limit": 500})
    board = ok(response)
    assert board["currency"] == "USD"
    assert [
        (row["customer_id"], row["customer_name"], row["order_count"]) for row in board["items"]
    ] == [(c, name, n) for c, name, n, _ in CUSTOMER_BOARD]
    assert [f"{row['total_spent']:.2f}" for row in board["items"]] == [
        spent for *_, spent in CUSTOMER_BOARD
    ]
    assert [row["rank"] for row in board["items"]] == list(range(1, 9))
    assert_money_text(response.text, "total_spent")
    top3 = ok(client.get("/api/leaderboard/customers", params={"limit": 3}))["items"]
    assert top3 == board["items"][:3]
    assert len(ok(client.get("/api/leaderboard/customers"))["items"]) == 8  # default 10
    response = client.get("/api/leaderboard/products", params={"limit": 500})
    products = ok(response)["items"]
    assert [
        (p["product_sku"], p["product_name"], p["total_quantity"], p["order_count"])
        for p in products
    ] == [(sku, name, units, n) for sku, name, units, _, n in PRODUCT_BOARD]
    assert [f"{p['total_revenue']:.2f}" for p in products] == [x[3] for x in PRODUCT_BOARD]
    assert [p["rank"] for p in products] == list(range(1, 8))
    assert_money_text(response.text, "total_revenue")
    assert raw_number(response.text, "total_revenue") == "120.00"
    assert ok(client.get("/api/leaderboard/products?limit=1"))["items"] == products[:1]
    assert ok(client.get("/api/leaderboard/products?currency=gbp")) == {
        "currency": "GBP",
        "items": [],
    }

    # Realtime: today's counters (processing time) and the last minute's rate.
    live = ok(client.get("/api/kpis/realtime"))
    assert (live["pending"], live["processing"]) == (0, 0)
    assert (live["completed_today"], live["failed_today"]) == (10, 0)
    assert (live["currency"], live["date"]) == ("USD", today())
    assert raw_number(client.get("/api/kpis/realtime").text, "revenue_today") == "1065.43"
    # The rate counts whole seconds before the current one: the run's second may still be open.
    wait_until(
        "a positive rate",
        lambda: ok(client.get("/api/kpis/realtime"))["orders_per_second"] > 0,
        timeout_s=3,
    )

    # Another order: the boards move at once, the KPIs with the next snapshot (cache dropped).
    extra = write_orders(
        tmp_path / "extra.csv",
        [[2001, 509, "Zoe Extra", "SKU-001", "Wireless Mouse", 4, "25.50", "USD", "2025-11-10"]],
    )
    cli(["ingest", str(extra)], env)
    cli(["wait", "--timeout", "30"], env, timeout=60)
    newer = wait_until(
        "a new snapshot",
        lambda: (
            d
            if (d := ok(client.get("/api/kpis/daily?date=2025-11-10")))["snapshot_version"]
            > version
            else None
        ),
    )
    assert newer["cached"] is False
    assert kpi_figures(newer) == (48596 + 10200, 6, (48596 + 10200 + 3) // 6, 6, 13, 0)
    assert ok(client.get("/api/kpis/daily?date=2025-11-10"))["cached"] is True
    assert ok(client.get("/api/kpis/realtime"))["completed_today"] == 11
    assert ok(client.get("/api/leaderboard/customers/509/rank"))["rank"] == 4  # 102.00
    assert ok(client.get("/api/leaderboard/products?limit=2"))["items"][1]["product_sku"] == (
        "SKU-001"  # 7 units now
    )

    # Rebuild: only with the token; the recomputed boards are the live ones.
    customers_before = ok(client.get("/api/leaderboard/customers?limit=500"))
    products_before = ok(client.get("/api/leaderboard/products?limit=500"))
    error(client.post("/api/leaderboard/rebuild"), 401)
    error(client.post("/api/leaderboard/rebuild", headers={"Authorization": "Bearer nope"}), 401)
    report = ok(client.post("/api/leaderboard/rebuild", headers=api.auth()))
    assert report["currencies"] == ["USD"]
    assert (report["customers"], report["products"]) == (9, 7)
    assert report["facts_files"] >= 1 and report["unsnapshotted_orders"] == 0
    assert report["seconds"] >= 0
    assert ok(client.get("/api/leaderboard/customers?limit=500")) == customers_before
    assert ok(client.get("/api/leaderboard/products?limit=500")) == products_before
    assert not r.exists(KEYS.leaderboard_rebuild)
    # Another rebuild running (its marker set): 409, and that rebuild's marker is left alone.
    r.set(KEYS.leaderboard_rebuild, "someone-else", px=60_000)
    busy = error(client.post("/api/leaderboard/rebuild", headers=api.auth()), 409)
    assert "already running" in busy["message"]
    assert r.get(KEYS.leaderboard_rebuild) == "someone-else"
    r.delete(KEYS.leaderboard_rebuild)
    assert ok(client.post("/api/leaderboard/rebuild", headers=api.auth()))["customers"] == 9
    assert ok(client.get("/api/leaderboard/customers?limit=500")) == customers_before


def test_validation_not_found_auth_and_empty_store(
    apis: Callable[..., LiveApi], sp_env: dict[str, str]
) -> None:
    api = apis(sp_env)
    client = api.client

    # Dates: the YYYY-MM-DD shape and a day that exists.
    for bad in ("2025-02-30", "2025-13-01", "2025-11-31", "20251110", "2025-1-01", "today", ""):
        errors = field_errors(client.get("/api/kpis/daily", params={"date": bad}))
        assert errors == {"date": [DATE_MESSAGE]}, (bad, errors)
    errors = field_errors(client.get("/api/kpis/daily?date=2025-11-10&date=2025-11-11"))
    assert errors == {"date": ["must be given once"]}
    range_ = "/api/kpis/range"
    assert field_errors(client.get(range_, params={"end_date": "2025-11-11"})) == {
        "start_date": ["is required"]
    }
    assert field_errors(client.get(range_)) == {
        "start_date": ["is required"],
        "end_date": ["is required"],
    }
    errors = field_errors(client.get(range_, params={"start_date": "2024-02-30", "end_date": "x"}))
    assert errors == {"start_date": [DATE_MESSAGE], "end_date": [DATE_MESSAGE]}
    reversed_ = field_errors(
        client.get(range_, params={"start_date": "2025-11-11", "end_date": "2025-11-10"})
    )
    assert reversed_ == {"end_date": ["must be on or after start_date"]}
    too_long = field_errors(
        client.get(range_, params={"start_date": "2020-01-01", "end_date": "2023-01-01"})
    )
    assert too_long == {"end_date": ["must be at most 1096 days from start_date"]}
    # The longest range allowed (1096 days, inclusive), on an empty store: zeros every day.
    longest = ok(client.get(range_, params={"start_date": "2020-01-01", "end_date": "2022-12-31"}))
    assert len(longest["days"]) == 1096 and longest["days"][-1]["date"] == "2022-12-31"
    assert kpi_figures(longest) == (0, 0, 0, 0, 0, 0) and longest["snapshot_version"] == 0
    leap = ok(client.get("/api/kpis/daily", params={"date": "2024-02-29"}))
    assert leap["date"] == "2024-02-29" and leap["order_count"] == 0

    # Limits and currencies.
    for path in ("/api/leaderboard/customers", "/api/leaderboard/products"):
        for bad in ("0", "501", "abc", "-1", "1.5", ""):
            errors = field_errors(client.get(path, params={"limit": bad}))
            assert errors == {"limit": [LIMIT_MESSAGE]}, (path, bad, errors)
        assert ok(client.get(path, params={"limit": "500"}))["items"] == []
    for path in (
        "/api/kpis/daily",
        "/api/kpis/range?start_date=2025-11-10&end_date=2025-11-10",
        "/api/kpis/realtime",
        "/api/customers/501",
        "/api/leaderboard/customers",
        "/api/leaderboard/customers/501/rank",
        "/api/leaderboard/products",
    ):
        for bad in ("US", "EURO", "U$D", "12A"):
            separator = "&" if "?" in path else "?"
            errors = field_errors(client.get(f"{path}{separator}currency={bad}"))
            assert errors == {"currency": [CURRENCY_MESSAGE]}, (path, bad, errors)

    # Customer ids: 1 .. 2^53 - 1.
    for path in ("/api/customers/{}", "/api/leaderboard/customers/{}/rank"):
        for bad in ("0", "-5", "abc", str(2**53), "1x"):
            errors = field_errors(client.get(path.format(bad)))
            assert list(errors) == ["id"] and "integer from 1 to" in errors["id"][0], errors
        absent = error(client.get(path.format(2**53 - 1)), 404)
        assert absent["errors"] == {} and "no completed order in USD" in absent["message"]
    error(client.get("/api/customers/999"), 404)

    # Empty store and boards: zeros and empty lists, never an error.
    empty = ok(client.get("/api/kpis/daily", params={"date": "2025-11-10", "currency": "eur"}))
    assert (empty["currency"], kpi_figures(empty), empty["snapshot_version"]) == (
        "EUR",
        (0, 0, 0, 0, 0, 0),
        0,
    )
    live = ok(client.get("/api/kpis/realtime"))
    assert (live["completed_today"], live["orders_per_second"], live["date"]) == (0, 0, today())
    assert '"revenue_today":0.00' in client.get("/api/kpis/realtime").text
    report = ok(client.post("/api/leaderboard/rebuild", headers=api.auth()))
    assert (report["currencies"], report["customers"], report["facts_files"]) == ([], 0, 0)

    # Writes: 401 without a valid bearer token, 403 when no token is configured.
    for headers in ({}, {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer x"}):
        error(client.post("/api/leaderboard/rebuild", headers=headers), 401)
    closed = apis(sp_env, token=None)
    refused = error(closed.client.post("/api/leaderboard/rebuild", headers=api.auth()), 403)
    assert "STREAMPROC_API_TOKEN" in refused["message"]
    response = client.get("/api/leaderboard/rebuild")
    assert error(response, 405)["message"] == "Method not allowed."

    # The OpenAPI document describes the new operations.
    document = client.get("/openapi.json").json()
    paths = document["paths"]
    daily_params = {p["name"]: p for p in paths["/api/kpis/daily"]["get"]["parameters"]}
    assert daily_params["date"]["schema"]["format"] == "date"
    assert daily_params["date"]["required"] is False
    range_params = {p["name"]: p["required"] for p in paths[range_]["get"]["parameters"]}
    assert range_params == {"start_date": True, "end_date": True, "currency": False}
    rebuild_op = paths["/api/leaderboard/rebuild"]["post"]
    assert rebuild_op["security"] == [{"bearer": []}]
    assert {"200", "401", "403", "409", "503"} <= set(rebuild_op["responses"])
    id_schema = paths["/api/customers/{id}"]["get"]["parameters"][0]["schema"]
    assert (id_schema["minimum"], id_schema["maximum"]) == (1, 2**53 - 1)
    assert "404" in paths["/api/leaderboard/customers/{id}/rank"]["get"]["responses"]


def test_slow_endpoints_get_longer_deadlines() -> None:
    settings = Settings.from_env({})
    by_path = {(ep.method, ep.path): ep for ep in ENDPOINTS}
    default_s = settings.api_redis_deadline_ms / 1000
    assert by_path[("GET", "/api/stats")].deadline_s(settings) == default_s
    for path in ("/api/kpis/daily", "/api/kpis/range"):
        assert by_path[("GET", path)].deadline_s(settings) == KPI_DEADLINE_MS / 1000
    rebuild = by_path[("POST", "/api/leaderboard/rebuild")]
    assert rebuild.deadline_s(settings) == REBUILD_DEADLINE_MS / 1000 >= 60
    # An operator's longer deadline still wins over an endpoint's shorter one.
    patient = Settings.from_env({"STREAMPROC_API_REDIS_DEADLINE_MS": "60000"})
    assert by_path[("GET", "/api/kpis/daily")].deadline_s(patient) == 60


def write_big_store(env: dict[str, str], r: redis.Redis, rows: int) -> None:
    """Register one Parquet file of `rows` completed facts (2024, 100k customers, 50 SKUs)."""
    root = Settings.from_env(env).analytics_path
    root.mkdir(parents=True, exist_ok=True)
    name = "facts-0000000000001-0.parquet"
    # DuckDB makes the rows itself: a million facts in a couple of seconds.
    duckdb.sql(
        f"""COPY (SELECT i::BIGINT AS seq, 'B' || i AS order_id, 1 AS attempt,
            'completed' AS state, false AS prior, (i % {BIG_CUSTOMERS} + 1)::BIGINT AS customer_id,
            'Customer ' || (i % {BIG_CUSTOMERS} + 1) AS customer_name, 'USD' AS currency,
            DATE '2024-01-01' + (i % 366)::INTEGER AS day,
            strftime(DATE '2024-01-01' + (i % 366)::INTEGER, '%Y-%m-%d') || 'T12:00:00.000Z'
                AS order_date,
            (1000 + i % 997)::BIGINT AS total_cents, 1::BIGINT AS items,
            [{{'sku': 'SKU-B' || (i % 50), 'name': 'Thing ' || (i % 50), 'quantity': 1::BIGINT,
               'amount_cents': (1000 + i % 997)::BIGINT}}] AS lines,
            0::BIGINT AS terminal_at_ms
        FROM range({rows}) t(i) ORDER BY day, customer_id)
        TO '{root / name}' (FORMAT parquet, COMPRESSION zstd)"""  # noqa: S608 - test-made text
    )
    info = FileInfo(rows, "2024-01-01", "2024-12-31", "1-0", (root / name).stat().st_size)
    r.hset(KEYS.snapshot_files, name, encode_info(info))
    r.incr(KEYS.snapshot_version)


def test_big_store_outlasts_the_default_deadline(
    apis: Callable[..., LiveApi], sp_env: dict[str, str], r: redis.Redis
) -> None:
    """A rebuild and an uncached KPI scan of a million facts take longer than the per-request
    Redis deadline (300 ms here), and still answer 200: their endpoints have their own."""
    deadline_s = 0.3
    env = dict(sp_env, STREAMPROC_API_REDIS_DEADLINE_MS=str(int(deadline_s * 1000)))
    rows = 1_000_000
    write_big_store(env, r, rows)
    api = apis(env)
    client = api.client

    started = time.monotonic()
    year = ok(client.get("/api/kpis/range?start_date=2024-01-01&end_date=2024-12-31"))
    scanned_s = time.monotonic() - started
    assert (year["order_count"], year["unique_customers"], year["items_sold"]) == (
        rows,
        BIG_CUSTOMERS,
        rows,
    )
    assert len(year["days"]) == 366 and year["cached"] is False
    assert sum(d["order_count"] for d in year["days"]) == rows
    started = time.monotonic()
    assert ok(client.get("/api/kpis/range?start_date=2024-01-01&end_date=2024-12-31"))["cached"]
    assert time.monotonic() - started < scanned_s  # the cache answers without DuckDB

    started = time.monotonic()
    report = ok(client.post("/api/leaderboard/rebuild", headers=api.auth()))
    took_s = time.monotonic() - started
    assert took_s > deadline_s, f"the rebuild took {took_s:.2f}s: too little data to show it"
    assert (report["customers"], report["products"], report["facts_files"]) == (
        BIG_CUSTOMERS,
        50,
        1,
    )
    standing = ok(client.get("/api/leaderboard/customers/1/rank"))
    assert standing["customers_ranked"] == BIG_CUSTOMERS
    assert standing["order_count"] == rows // BIG_CUSTOMERS
    products = ok(client.get("/api/leaderboard/products?limit=500"))["items"]
    assert len(products) == 50 and sum(p["total_quantity"] for p in products) == rows
    # Ordinary endpoints keep the short deadline (and still answer well within it).
    assert ok(client.get("/api/kpis/realtime"))["pending"] == 0


def test_frozen_redis_gives_a_fast_503_despite_long_deadlines(
    apis: Callable[..., LiveApi], sp_env: dict[str, str], redis_server: ServerHandle
) -> None:
    """The long deadlines bound DuckDB work, not a dead server: each Redis command still gives
    up after STREAMPROC_API_REDIS_DEADLINE_MS, so every analytics endpoint answers 503 fast."""
    api = apis(sp_env)
    client = api.client
    calls: list[tuple[str, Callable[[], httpx.Response]]] = [
        ("daily", lambda: client.get("/api/kpis/daily?date=2025-11-10")),
        ("range", lambda: client.get("/api/kpis/range?start_date=2024-01-01&end_date=2024-12-31")),
        ("realtime", lambda: client.get("/api/kpis/realtime")),
        ("customer", lambda: client.get("/api/customers/501")),
        ("board", lambda: client.get("/api/leaderboard/customers")),
        ("rank", lambda: client.get("/api/leaderboard/customers/501/rank")),
        ("products", lambda: client.get("/api/leaderboard/products")),
        ("rebuild", lambda: client.post("/api/leaderboard/rebuild", headers=api.auth())),
    ]
    assert ok(client.get("/api/kpis/daily?date=2025-11-10"))["order_count"] == 0
    redis_server.pause()
    try:
        for name, call in calls:
            response, took = timed(call)
            assert error(response, 503)["message"] == UNAVAILABLE, name
            assert took < DOWN_BUDGET_S, f"{name} took {took:.2f}s"
    finally:
        redis_server.resume()
    wait_until("recovery", lambda: client.get("/api/kpis/realtime").status_code == 200)
    assert ok(client.get("/api/kpis/daily?date=2025-11-10"))["order_count"] == 0
    assert ok(client.post("/api/leaderboard/rebuild", headers=api.auth()))["customers"] == 0
