"""The HTTP API as a client sees it: a live `streamproc api` (uvicorn) process over real HTTP.

Every endpoint is exercised with real data made by real consumer processes; every error class
(422, 404, 405, 401, 403, 409, 413, 500, 503) is provoked for real, including a corrupt order hash
and a Redis server that is killed or frozen with SIGSTOP. A response hook checks every single
response of every test: an x-request-id header, JSON, the SPEC §7 error envelope, and no internal
detail (traceback, key names, the Redis address or port).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
import redis

from streamproc.keys import STAGES, Keys
from tests.api_support import TOKEN, LiveApi
from tests.helpers import REPO_ROOT, ServerHandle, stop_procs
from tests.support import Pipeline, cli, export, one_line, write_orders

KEYS = Keys()
SAMPLE = REPO_ROOT / "sample.csv"
SAMPLE_TOTAL = "1065.43"  # the ten orders of sample.csv, summed by hand
ISO_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$")
STREAM_ID = re.compile(r"^\d+-\d+$")
MAX_BODY = 1024
DOWN_BUDGET_S = 1.0
UNAVAILABLE = "The data store is unavailable; try again shortly."
ROUTES = {
    ("get", "/api/health"),
    ("get", "/api/stats"),
    ("get", "/api/orders/{order_id}"),
    ("get", "/api/streams"),
    ("get", "/api/dlq"),
    ("post", "/api/dlq/{id}/retry"),
    ("get", "/api/kpis/daily"),
    ("get", "/api/kpis/range"),
    ("get", "/api/kpis/realtime"),
    ("get", "/api/customers/{id}"),
    ("get", "/api/leaderboard/customers"),
    ("get", "/api/leaderboard/customers/{id}/rank"),
    ("get", "/api/leaderboard/products"),
    ("post", "/api/leaderboard/rebuild"),
    ("get", "/api/notifications"),
    ("get", "/api/notifications/stats"),
    ("get", "/api/notifications/recent"),
    ("get", "/api/notifications/order/{order_id}"),
    ("post", "/api/notifications/{id}/resend"),
    ("get", "/api/customers/{id}/notification-preferences"),
    ("put", "/api/customers/{id}/notification-preferences"),
}
# The routes answering 202 (the others answer 200).
ACCEPTED = {("post", "/api/dlq/{id}/retry"), ("post", "/api/notifications/{id}/resend")}
# Internal detail that must never reach a client.
LEAKS = ("Traceback", 'File "', "{sp", "127.0.0.1", "localhost", "redis://")


# --- the per-response guard ---------------------------------------------------------------------


def _strings(value: Any) -> Iterator[str]:
    """Every string (keys and values) inside decoded JSON."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def response_problems(response: httpx.Response, redis_port: int) -> list[str]:
    """What is wrong with one response, whatever the endpoint (empty when nothing is)."""
    problems = []
    if not response.headers.get("x-request-id"):
        problems.append("no x-request-id header")
    text = response.text
    problems += [f"body contains {leak!r}" for leak in LEAKS if leak in text]
    if not response.headers.get("content-type", "").startswith("application/json"):
        return [*problems, f"not JSON: {response.headers.get('content-type')}"]
    try:
        body = response.json()
    except ValueError:
        return [*problems, "body is not valid JSON"]
    # The port as a number of its own inside a string (numbers such as idle_ms are not addresses).
    port = re.compile(rf"(?<!\d){redis_port}(?!\d)")
    problems += [f"string mentions the Redis port: {s!r}" for s in _strings(body) if port.search(s)]
    if response.url.path == "/openapi.json":
        return problems
    if not isinstance(body, dict):
        return [*problems, "body is not an object"]
    if response.status_code >= 400:
        if body.get("success") is not False:
            problems.append("error without success=false")
        if not isinstance(body.get("message"), str) or not body["message"]:
            problems.append("error without a message")
        errors = body.get("errors")
        if not isinstance(errors, dict) or not all(
            isinstance(msgs, list) and msgs and all(isinstance(m, str) for m in msgs)
            for msgs in errors.values()
        ):
            problems.append(f"error without an errors object of message lists: {errors!r}")
    elif body.get("success") is not True or "data" not in body:
        problems.append("success without success=true and data")
    return problems


def guard(redis_port: int) -> Callable[[httpx.Response], None]:
    def check(response: httpx.Response) -> None:
        response.read()
        problems = response_problems(response, redis_port)
        if problems:
            request = response.request
            raise AssertionError(
                f"{request.method} {request.url} -> {response.status_code}: {problems}\n"
                f"{response.text[:2000]}"
            )

    return check


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def apis(
    sp_env: dict[str, str], redis_url: str, tmp_path: Path
) -> Iterator[Callable[..., LiveApi]]:
    """Start API processes (guarded clients); each must exit 0 on SIGTERM at teardown."""
    started: list[LiveApi] = []
    redis_port = urlparse(redis_url).port
    assert redis_port is not None

    def start(env: dict[str, str] | None = None, token: str | None = TOKEN) -> LiveApi:
        api = LiveApi(env or sp_env, tmp_path / f"api-{len(started)}.log", token=token)
        api.client.event_hooks["response"] = [guard(redis_port)]
        started.append(api)
        return api.start()

    yield start
    codes = [api.stop() for api in started]
    assert codes == [0] * len(started), f"API exit codes on SIGTERM: {codes}\n" + "\n".join(
        a.log()[-3000:] for a in started
    )


@pytest.fixture
def pipelines(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], Pipeline]]:
    """Consumer fleets; whatever is still running at teardown is stopped."""
    made: list[Pipeline] = []

    def make(env: dict[str, str]) -> Pipeline:
        log_dir = tmp_path / f"consumers-{len(made)}"
        log_dir.mkdir()
        made.append(Pipeline(env, log_dir))
        return made[-1]

    yield make
    stop_procs([proc for pipeline in made for proc in pipeline.procs])


def run_all_stages(pipeline: Pipeline) -> None:
    """One `consume --stage all`, registered in every stage's group."""
    pipeline.start("all")
    for stage in STAGES:
        pipeline.wait_registered(stage, 1)


# --- helpers ------------------------------------------------------------------------------------


def ok(response: httpx.Response, status: int = 200) -> Any:
    """The data of a successful answer."""
    assert response.status_code == status, (response.status_code, response.text)
    return response.json()["data"]


def error(response: httpx.Response, status: int) -> dict[str, Any]:
    """The body of an error answer with this status."""
    assert response.status_code == status, (response.status_code, response.text)
    body: dict[str, Any] = response.json()
    assert body["success"] is False
    return body


def field_errors(response: httpx.Response) -> dict[str, list[str]]:
    body = error(response, 422)
    assert body["message"] == "The given data was invalid."
    errors: dict[str, list[str]] = body["errors"]
    return errors


def raw_number(text: str, field: str) -> str:
    """The literal JSON text of a numeric field (the first occurrence)."""
    match = re.search(rf'"{field}":(-?[0-9.eE+]+)', text)
    assert match, f"{field} not in {text[:500]}"
    return match.group(1)


def assert_money_text(text: str, *fields: str) -> None:
    """Every occurrence of these fields is a JSON number with exactly two decimals."""
    for field in fields:
        values = re.findall(rf'"{field}":([^,}}\]]+)', text)
        assert values, f"{field} missing"
        for value in values:
            if value != "null":
                assert re.fullmatch(r"-?\d+\.\d\d", value), f"{field} rendered as {value}"


def page_all(client: httpx.Client, limit: int, stage: str | None = None) -> list[list[str]]:
    """Every page of /api/dlq (ids per page), following next_cursor to the end."""
    pages: list[list[str]] = []
    cursor: str | None = None
    for _ in range(100):
        params: dict[str, Any] = {"limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        if stage is not None:
            params["stage"] = stage
        page = ok(client.get("/api/dlq", params=params))
        assert len(page["items"]) <= limit
        if stage is not None:
            assert {item["stage"] for item in page["items"]} <= {stage}
        pages.append([item["id"] for item in page["items"]])
        cursor = page["next_cursor"]
        if cursor is None:
            return pages
        assert page["items"], "an empty page with a cursor"
        assert cursor == page["items"][-1]["id"]
    pytest.fail("dlq paging never ended")


def dlq_ids(r: redis.Redis, stage: str | None = None) -> list[str]:
    """Dead-letter ids straight from Redis, oldest first."""
    entries: list[tuple[str, dict[str, str]]] = r.xrange(KEYS.dead_letters)  # type: ignore[assignment]
    return [entry_id for entry_id, fields in entries if stage is None or fields["stage"] == stage]


def timed(call: Callable[[], httpx.Response]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


def assert_timeline(order: dict[str, Any], expected: list[tuple[str, str | None]]) -> None:
    """The timeline's (state, stage) pairs, with ISO 8601 Z times that never go backwards."""
    timeline = order["timeline"]
    assert [(step["state"], step["stage"]) for step in timeline] == expected, timeline
    times = [step["at"] for step in timeline]
    assert all(ISO_Z.match(at) for at in times), times
    assert times == sorted(times), times
    assert ISO_Z.match(order["created_at"]) and ISO_Z.match(order["updated_at"])
    assert order["created_at"] == times[0] and order["updated_at"] == times[-1]


# --- every endpoint on real data ----------------------------------------------------------------


def test_endpoints_on_a_processed_sample(
    apis: Callable[..., LiveApi],
    pipelines: Callable[[dict[str, str]], Pipeline],
    sp_env: dict[str, str],
) -> None:
    env = dict(sp_env, STREAMPROC_PAYMENT_SUCCESS_RATE="1.0", STREAMPROC_PAYMENT_SEED="7")
    api = apis(env)
    client = api.client

    # A fresh server: no consumer group at all, so health fails and names the part.
    down = error(client.get("/api/health"), 503)
    assert down["data"]["status"] == "fail"
    assert set(down["errors"]) == {"consumer_groups"}, down
    assert "reserve" in down["errors"]["consumer_groups"][0]
    assert down["data"]["checks"]["redis"]["status"] == "ok"
    empty = ok(client.get("/api/stats"))
    assert empty["orders"]["total"] == 0 and empty["today"]["orders"] == 0
    assert '"revenue":0.00' in client.get("/api/stats").text

    day = today()
    cli(["stock", "load", str(REPO_ROOT / "products.csv")], env)
    cli(["ingest", str(SAMPLE)], env)
    # Work is waiting and nobody consumes it: still a failure, now of the lag check.
    stalled = error(client.get("/api/health"), 503)
    assert set(stalled["errors"]) == {"lag"}, stalled
    assert "reserve" in stalled["errors"]["lag"][0]
    reserve = next(s for s in stalled["data"]["stages"] if s["stage"] == "reserve")
    assert (reserve["lag"], reserve["live_consumers"]) == (10, 0)

    pipeline = pipelines(env)
    run_all_stages(pipeline)
    cli(["wait", "--timeout", "30"], env, timeout=60)

    # Consumers running, everything drained: healthy.
    health = ok(client.get("/api/health"))
    assert health["status"] == "ok", health
    assert [s["stage"] for s in health["stages"]] == list(STAGES)
    assert all(s["live_consumers"] >= 1 and s["status"] == "ok" for s in health["stages"])
    assert health["redis_latency_ms"] >= 0

    streams = ok(client.get("/api/streams"))
    assert [s["stage"] for s in streams["stages"]] == list(STAGES)
    assert streams["dead_letters"] == 0
    for stage in streams["stages"]:
        assert stage["group_exists"] is True
        assert (stage["lag"], stage["pending"], stage["oldest_pending_age_ms"]) == (0, 0, 0)
        assert isinstance(stage["length"], int) and stage["length"] >= 0
        assert stage["consumers"], stage
        for consumer in stage["consumers"]:
            assert consumer["name"] and consumer["pending"] == 0
            assert isinstance(consumer["idle_ms"], int) and 0 <= consumer["idle_ms"] < 30_000
    pipeline.wait_drained(10)

    exported = export(env)
    assert len(exported) == 10
    assert {o["state"] for o in exported.values()} == {"completed"}
    expected_cents = sum(int(o["total_cents"]) for o in exported.values())
    expected_revenue = f"{Decimal(expected_cents) / 100:.2f}"
    assert expected_revenue == SAMPLE_TOTAL

    response = client.get("/api/stats")
    stats = ok(response)
    assert stats["orders"] == {
        "total": 10,
        "pending": 0,
        "processing": 0,
        "completed": 10,
        "failed": 0,
    }
    assert stats["by_state"]["completed"] == 10
    assert sum(stats["by_state"].values()) == 10
    assert_money_text(response.text, "revenue")
    if today() == day:  # the counters are per UTC day: skip these at the stroke of midnight
        assert stats["today"]["date"] == day
        assert (stats["today"]["orders"], stats["today"]["completed"]) == (10, 10)
        assert stats["today"]["failed"] == 0
        assert stats["today"]["currency"] == "USD"
        assert raw_number(response.text, "revenue") == expected_revenue
        assert f'"revenue":{expected_revenue}' in response.text
        assert f'"revenue_by_currency":{{"USD":{expected_revenue}}}' in response.text
        lower = client.get("/api/stats", params={"currency": "usd"})
        assert raw_number(lower.text, "revenue") == expected_revenue
        other = client.get("/api/stats", params={"currency": "EUR"})
        assert ok(other)["today"]["currency"] == "EUR"
        assert raw_number(other.text, "revenue") == "0.00"

    # One order in full: 1005 is 2 x 129.99.
    response = client.get("/api/orders/1005")
    order = ok(response)
    assert (order["order_id"], order["status"], order["attempt"]) == ("1005", "completed", 1)
    assert order["next_stage"] is None and order["error_message"] is None
    assert (order["customer_id"], order["customer_name"]) == (505, "David Johnson")
    assert order["currency"] == "USD" and order["order_date"] == "2025-11-10T15:10:55Z"
    assert order["item_count"] == 2
    assert order["lines"] == [
        {
            "product_sku": "SKU-005",
            "product_name": "External SSD 1TB",
            "quantity": 2,
            "unit_price": 129.99,
            "amount": 259.98,
        }
    ]
    assert raw_number(response.text, "total_amount") == "259.98"
    assert Decimal(raw_number(response.text, "total_amount")) * 100 == int(
        exported["1005"]["total_cents"]
    )
    assert_money_text(response.text, "total_amount", "unit_price", "amount")
    payment = order["payment"]
    assert (payment["status"], payment["idempotency_key"]) == ("charged", "pay:1005")
    assert (payment["currency"], payment["successful_charges"]) == ("USD", 1)
    assert ISO_Z.match(payment["recorded_at"])
    assert_timeline(
        order,
        [
            ("pending", "ingest"),
            ("reserved", "reserve"),
            ("completed", "payment"),  # charged, and settled in the same step
        ],
    )
    # Round money: 1001 is 2 x 25.50 = 51.00, still two decimals on the wire.
    response = client.get("/api/orders/1001")
    assert raw_number(response.text, "total_amount") == "51.00"
    assert raw_number(response.text, "unit_price") == "25.50"
    for order_id, row in exported.items():
        view = ok(client.get(f"/api/orders/{order_id}"))
        assert view["status"] == row["state"]
        assert round(view["total_amount"] * 100) == int(row["total_cents"])
        assert round(sum(line["amount"] for line in view["lines"]) * 100) == int(row["total_cents"])

    missing = error(client.get("/api/orders/NO-SUCH-ORDER"), 404)
    assert missing["message"] == "Order NO-SUCH-ORDER not found." and missing["errors"] == {}

    empty_dlq = ok(client.get("/api/dlq"))
    assert empty_dlq == {"items": [], "next_cursor": None, "total": 0}


# --- dead letters: paging, filtering, retry, conflict -------------------------------------------


def test_dead_letters_paged_filtered_retried_and_conflicting(
    apis: Callable[..., LiveApi],
    pipelines: Callable[[dict[str, str]], Pipeline],
    sp_env: dict[str, str],
    r: redis.Redis,
    tmp_path: Path,
) -> None:
    poison = "D-003"
    env = dict(
        sp_env,
        STREAMPROC_PAYMENT_SUCCESS_RATE="0.0",  # every healthy order is declined and rolled back
        STREAMPROC_MAX_DELIVERIES="1",  # the poison order is dead-lettered on its first failure
        STREAMPROC_BLOCK_MS="100",
    )
    poisoned = dict(env, STREAMPROC_FAULT_POISON=poison)
    orders_csv = write_orders(
        tmp_path / "orders.csv", [one_line(f"D-00{n}", "SKU-D", n) for n in range(1, 5)]
    )
    cli(["stock", "set", "SKU-D", "100"], env)
    cli(["ingest", str(orders_csv)], env)
    # Two undecodable entries on every stage: dead-lettered at once, whatever the stage.
    for stage in STAGES:
        for n in range(2):
            r.xadd(KEYS.stream(stage), {"o": f"junk-{stage}-{n}", "a": "1", "d": "not-json"})
    api = apis(env)
    client = api.client

    first = pipelines(poisoned)
    first.start("all")
    first.wait_drained(30)

    everything = dlq_ids(r)
    # The snapshot stage's junk is on the facts stream, which notify's group reads as well: each
    # of the two readers dead-letters it.
    junk_count = 2 * len(STAGES) + 2
    total = junk_count + 2  # the junk + the poison's 2 (reserve and notify run the poison hook)
    assert len(everything) == total, r.xrange(KEYS.dead_letters)
    assert ok(client.get("/api/streams"))["dead_letters"] == total
    for limit in (1, 5, 12, 500):
        pages = page_all(client, limit)
        flat = [entry_id for page in pages for entry_id in page]
        assert flat == everything, (limit, pages)  # each exactly once, oldest first
        assert [len(p) for p in pages[:-1]] == [limit] * (len(pages) - 1)
    first_page = ok(client.get("/api/dlq", params={"limit": 5}))
    assert first_page["total"] == total and len(first_page["items"]) == 5
    for stage in STAGES:
        expected = dlq_ids(r, stage)
        assert len(expected) == {"reserve": 3, "notify": 5}.get(stage, 2), stage
        for limit in (1, 2, 50):
            pages = page_all(client, limit, stage)
            assert [i for page in pages for i in page] == expected, (stage, limit, pages)

    letters = ok(client.get("/api/dlq", params={"limit": 500}))["items"]
    junk = [x for x in letters if x["order_id"].startswith("junk-")]
    assert len(junk) == junk_count
    for letter in junk:
        assert letter["error"].startswith("undecodable entry"), letter
        assert letter["previous_state"] is None and letter["deliveries"] == 1
        # Junk from every stream the stage reads (notify: its own and the facts stream).
        written_to = {s for s in STAGES if KEYS.stream(s) in KEYS.sources(letter["stage"])}
        assert letter["order_id"] in {f"junk-{s}-{n}" for s in written_to for n in (0, 1)}, letter
    (reserve_letter,) = [x for x in letters if x["order_id"] == poison and x["stage"] == "reserve"]
    assert (reserve_letter["attempt"], reserve_letter["deliveries"]) == (1, 1)
    assert reserve_letter["previous_state"] == "pending"
    assert "injected poison" in reserve_letter["error"]
    assert STREAM_ID.match(reserve_letter["original_id"])
    assert ISO_Z.match(reserve_letter["dead_lettered_at"])

    # The poisoned order, and a declined one for the other payment outcome.
    dead = ok(client.get(f"/api/orders/{poison}"))
    assert dead["status"] == "dead_lettered" and "injected poison" in dead["error_message"]
    assert_timeline(dead, [("pending", "ingest"), ("dead_lettered", "reserve")])
    assert dead["payment"]["status"] == "not_attempted" and dead["payment"]["amount"] is None
    declined = client.get("/api/orders/D-002")
    view = ok(declined)
    assert (view["status"], view["payment"]["status"]) == ("rolled_back", "declined")
    assert view["payment"]["successful_charges"] == 0
    assert raw_number(declined.text, "total_amount") == "20.00"
    assert_money_text(declined.text, "total_amount", "unit_price", "amount")
    assert_timeline(
        view,
        [
            ("pending", "ingest"),
            ("reserved", "reserve"),
            ("rolled_back", "payment"),  # declined, and the stock released in the same step
        ],
    )
    stats = ok(client.get("/api/stats"))
    assert stats["by_state"]["dead_lettered"] == 1 and stats["by_state"]["rolled_back"] == 3
    assert stats["orders"]["failed"] == 4

    # Retry: accepted, the order is back where it was, the letter is gone.
    retried = ok(
        client.post(f"/api/dlq/{reserve_letter['id']}/retry", headers=api.auth()), status=202
    )
    assert retried["id"] == reserve_letter["id"]
    assert STREAM_ID.match(retried["stage_entry_id"])
    assert r.xrange(KEYS.stream("reserve"), retried["stage_entry_id"], retried["stage_entry_id"])
    revived = ok(client.get(f"/api/orders/{poison}"))
    assert (revived["status"], revived["next_stage"]) == ("pending", "reserve")
    assert revived["error_message"] is None
    assert [s["state"] for s in revived["timeline"]] == ["pending", "dead_lettered", "pending"]
    assert reserve_letter["id"] not in dlq_ids(r)
    assert ok(client.get("/api/dlq"))["total"] == total - 1
    counts = ok(client.get("/api/stats"))["by_state"]
    assert (counts["dead_lettered"], counts["pending"]) == (0, 1)
    gone = error(client.post(f"/api/dlq/{reserve_letter['id']}/retry", headers=api.auth()), 404)
    assert reserve_letter["id"] in gone["message"]
    error(client.post("/api/dlq/1-1/retry", headers=api.auth()), 404)

    # Dead-lettered again, then re-submitted by `ingest --force`: its letter is stale now.
    second = pipelines(poisoned)
    second.start("all")
    second.wait_drained(30)
    (again,) = [
        x
        for x in ok(client.get("/api/dlq", params={"stage": "reserve"}))["items"]
        if x["order_id"] == poison
    ]
    assert ok(client.get(f"/api/orders/{poison}"))["status"] == "dead_lettered"
    force_csv = write_orders(tmp_path / "force.csv", [one_line(poison, "SKU-D", 3)])
    forced = json.loads(cli(["ingest", str(force_csv), "--force", "--json"], env).stdout)
    assert forced["resubmitted"] == 1, forced
    conflict = error(client.post(f"/api/dlq/{again['id']}/retry", headers=api.auth()), 409)
    assert "pending" in conflict["message"], conflict
    assert again["id"] in dlq_ids(r)  # a refused retry changes nothing
    moved_on = ok(client.get(f"/api/orders/{poison}"))
    assert (moved_on["status"], moved_on["attempt"]) == ("pending", 2)
    assert moved_on["payment"]["idempotency_key"] == f"pay:{poison}:2"


# --- every error class --------------------------------------------------------------------------


def test_validation_routing_auth_and_body_limits(
    apis: Callable[..., LiveApi], sp_env: dict[str, str]
) -> None:
    api = apis(dict(sp_env, STREAMPROC_API_MAX_BODY_BYTES=str(MAX_BODY)))
    client = api.client

    # 422 with a message per bad field.
    assert set(field_errors(client.get("/api/orders/bad id!"))) == {"order_id"}
    assert set(field_errors(client.get("/api/orders/" + "x" * 65))) == {"order_id"}
    for bad in ("0", "abc", "100000", "-1", "1.5", ""):
        errors = field_errors(client.get("/api/dlq", params={"limit": bad}))
        assert errors == {"limit": ["must be an integer from 1 to 500"]}, (bad, errors)
    for bad in ("bad", "1", "1-", "-1", "1-1-1", "9" * 20 + "-0"):
        errors = field_errors(client.get("/api/dlq", params={"cursor": bad}))
        assert list(errors) == ["cursor"] and "stream entry id" in errors["cursor"][0], errors
    errors = field_errors(client.get("/api/dlq", params={"stage": "bogus"}))
    assert errors == {"stage": [f"must be one of: {', '.join(STAGES)}"]}
    errors = field_errors(client.get("/api/dlq?limit=0&cursor=nope&stage=all"))
    assert set(errors) == {"limit", "cursor", "stage"}
    for bad in ("US", "USDX", "12$", "U1D"):
        errors = field_errors(client.get("/api/stats", params={"currency": bad}))
        assert errors == {"currency": ["must be a 3-letter ISO 4217 code"]}, (bad, errors)
    errors = field_errors(client.post("/api/dlq/not-an-id/retry", headers=api.auth()))
    assert list(errors) == ["id"]
    # Valid values of the same parameters are accepted.
    assert ok(client.get("/api/dlq", params={"limit": 500, "cursor": "1-1", "stage": "notify"}))

    # 404: unknown ids and unknown routes.
    assert error(client.get("/api/orders/NOPE"), 404)["message"] == "Order NOPE not found."
    # A trailing slash is a plain 404 too, never a redirect without a JSON body.
    for path in ("/api/nope", "/nope", "/api/orders", "/api/dlq/1-1", "/api/stats/"):
        assert error(client.get(path), 404)["message"] == "Not found.", path
    error(client.post("/api/dlq/1-1/retry", headers=api.auth()), 404)

    # 405 with Allow.
    for method, path, allowed in (
        ("POST", "/api/health", "GET"),
        ("DELETE", "/api/orders/1", "GET"),
        ("PUT", "/api/dlq", "GET"),
        ("GET", "/api/dlq/1-1/retry", "POST"),
    ):
        response = client.request(method, path, headers=api.auth())
        assert error(response, 405)["message"] == "Method not allowed."
        assert allowed in response.headers["allow"].replace(" ", "").split(","), response.headers

    # 401: no header, wrong token, wrong scheme, empty token; the challenge names the scheme.
    retry = "/api/dlq/1-1/retry"
    for headers in (
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
        {"Authorization": "Bearer"},
    ):
        response = client.post(retry, headers=headers)
        error(response, 401)
        assert response.headers["www-authenticate"].startswith("Bearer"), headers
    # 403: a token in the URL is refused, even next to a valid header, on any route.
    for path in (f"{retry}?token={TOKEN}", f"{retry}?access_token={TOKEN}"):
        assert (
            "not accepted in the URL"
            in error(client.post(path, headers=api.auth()), 403)["message"]
        )
    error(client.get(f"/api/stats?token={TOKEN}"), 403)

    # 413 by Content-Length (checked before anything else) and by a chunked body.
    for headers in ({}, api.auth()):
        big = client.post(retry, content=b"x" * (MAX_BODY + 1), headers=headers)
        assert str(MAX_BODY) in error(big, 413)["message"]

    def chunks(total: int) -> Iterator[bytes]:
        for _ in range(total // 256):
            yield b"x" * 256

    chunked = client.post(retry, content=chunks(MAX_BODY * 4), headers=api.auth())
    assert chunked.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in chunked.request.headers
    assert str(MAX_BODY) in error(chunked, 413)["message"]
    # Under the limit, chunked or not, the request goes through (to the unknown id's 404).
    error(client.post(retry, content=chunks(512), headers=api.auth()), 404)
    error(client.post(retry, content=b"{}", headers=api.auth()), 404)

    # Request ids: a sane one is echoed back, anything else is replaced by a fresh one.
    response = client.get("/api/stats", headers={"X-Request-ID": "probe-42.a_b"})
    assert response.headers["x-request-id"] == "probe-42.a_b"
    seen = set()
    for given in ("has space", "x" * 65, "semi;colon", ""):
        response = client.get("/api/stats", headers={"X-Request-ID": given})
        assert response.headers["x-request-id"] not in (given, ""), given
        seen.add(response.headers["x-request-id"])
    assert len(seen) == 4  # fresh ones, not a constant


def test_crash_is_a_clean_500_openapi_and_closed_writes(
    apis: Callable[..., LiveApi], sp_env: dict[str, str], r: redis.Redis
) -> None:
    api = apis(sp_env)
    client = api.client
    retry = "/api/dlq/1-1/retry"

    # 500: an order hash whose payload cannot be decoded.
    r.hset(
        KEYS.order("CORRUPT-1"),
        mapping={"s": "pending", "a": "1", "k": "reserve", "d": "garbage{{", "h": "pending@1"},
    )
    response = client.get("/api/orders/CORRUPT-1")
    body = error(response, 500)
    assert body["message"] == "Internal server error." and body["errors"] == {}
    request_id = response.headers["x-request-id"]
    assert body["request_id"] == request_id
    for detail in ("garbage", "Decode", "msgspec", "Error", "line ", "CORRUPT-1"):
        assert detail not in response.text, detail
    echoed = client.get("/api/orders/CORRUPT-1", headers={"X-Request-ID": "corrupt-probe-1"})
    assert error(echoed, 500)["request_id"] == "corrupt-probe-1"
    deadline = time.monotonic() + 5
    while "corrupt-probe-1" not in api.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = api.log()
    assert f"request {request_id} failed" in log, log[-3000:]
    assert "request corrupt-probe-1 failed" in log
    assert "Traceback" in log
    # The server keeps serving after a crash.
    assert ok(client.get("/api/stats"))["orders"]["total"] == 0

    # OpenAPI 3.1 lists every route with its responses.
    document = client.get("/openapi.json").json()
    assert document["openapi"] == "3.1.0"
    assert document["info"]["title"] and document["info"]["version"]
    listed = {(method, path) for path, ops in document["paths"].items() for method in ops}
    assert listed == ROUTES
    schemas = document["components"]["schemas"]
    refs = re.findall(r'"\$ref":\s*"#/components/schemas/([^"]+)"', json.dumps(document))
    assert refs and set(refs) <= set(schemas), set(refs) - set(schemas)
    for method, path in ROUTES:
        op = document["paths"][path][method]
        assert op["operationId"] and op["summary"]
        success_status = "202" if (method, path) in ACCEPTED else "200"
        # Every route reads Redis, so every route can answer 503 (health included).
        assert {success_status, "403", "503"} <= set(op["responses"]), (path, op["responses"])
        schema = op["responses"][success_status]["content"]["application/json"]["schema"]
        assert schema["required"] == ["success", "data"]
    retry_op = document["paths"]["/api/dlq/{id}/retry"]["post"]
    assert {"202", "401", "403", "404", "409", "422", "503"} <= set(retry_op["responses"])
    assert retry_op["security"] == [{"bearer": []}]
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    dlq_params = {p["name"]: p for p in document["paths"]["/api/dlq"]["get"]["parameters"]}
    assert dlq_params["limit"]["schema"]["maximum"] == 500
    assert dlq_params["limit"]["schema"]["minimum"] == 1
    order_param = document["paths"]["/api/orders/{order_id}"]["get"]["parameters"][0]
    assert (order_param["in"], order_param["required"]) == ("path", True)

    # Writes with no token configured: 403 saying how to enable them; reads still work.
    closed = apis(sp_env, token=None)
    for headers in ({}, {"Authorization": f"Bearer {TOKEN}"}):
        refused = error(closed.client.post(retry, headers=headers), 403)
        assert "STREAMPROC_API_TOKEN" in refused["message"]
    assert ok(closed.client.get("/api/stats"))["orders"]["total"] == 0


# --- Redis down: killed, and frozen with SIGSTOP ------------------------------------------------


def data_calls(api: LiveApi) -> list[tuple[str, Callable[[], httpx.Response]]]:
    client = api.client
    return [
        ("stats", lambda: client.get("/api/stats")),
        ("order", lambda: client.get("/api/orders/1001")),
        ("streams", lambda: client.get("/api/streams")),
        ("dlq", lambda: client.get("/api/dlq")),
        ("retry", lambda: client.post("/api/dlq/1-1/retry", headers=api.auth())),
    ]


def assert_unavailable(api: LiveApi, how: str) -> None:
    """Health and every data endpoint answer 503 within the budget, one after the other."""
    response, took = timed(lambda: api.client.get("/api/health"))
    body = error(response, 503)
    assert took < DOWN_BUDGET_S, f"{how}: health took {took:.2f}s"
    assert "redis" in body["errors"], body
    assert body["data"]["status"] == "fail"
    assert body["data"]["checks"]["redis"]["status"] == "fail"
    for name, call in data_calls(api):
        response, took = timed(call)
        assert error(response, 503)["message"] == UNAVAILABLE, name
        assert took < DOWN_BUDGET_S, f"{how}: {name} took {took:.2f}s"


def assert_recovered(api: LiveApi, how: str) -> None:
    """Within a few seconds of the server's return, everything answers as before."""
    deadline = time.monotonic() + 10
    while api.client.get("/api/health").status_code != 200:
        if time.monotonic() > deadline:
            pytest.fail(f"{how}: the API never recovered\n{api.log()[-3000:]}")
        time.sleep(0.1)
    assert ok(api.client.get("/api/health"))["status"] in ("ok", "degraded")
    assert ok(api.client.get("/api/stats"))["orders"]["completed"] == 10
    # Each answer is the one asked for (no reply of a timed-out command read late).
    for order_id in ("1001", "1002", "1003", "1001"):
        assert ok(api.client.get(f"/api/orders/{order_id}"))["order_id"] == order_id
    streams = ok(api.client.get("/api/streams"))
    assert [s["stage"] for s in streams["stages"]] == list(STAGES)
    assert all(s["group_exists"] for s in streams["stages"])  # (idle consumers are not in the AOF)
    assert ok(api.client.get("/api/dlq"))["total"] == 0
    error(api.client.post("/api/dlq/1-1/retry", headers=api.auth()), 404)


def test_redis_killed_or_paused_gives_fast_503_and_recovery(
    apis: Callable[..., LiveApi],
    pipelines: Callable[[dict[str, str]], Pipeline],
    sp_env: dict[str, str],
    redis_server: ServerHandle,
) -> None:
    env = dict(sp_env, STREAMPROC_PAYMENT_SUCCESS_RATE="1.0")
    cli(["ingest", str(SAMPLE)], env)
    pipeline = pipelines(env)
    pipeline.start("all")
    pipeline.wait_drained(30)  # ten completed orders; the consumers are stopped again
    api = apis(env)
    assert_recovered(api, "before any fault")

    redis_server.kill()
    try:
        assert_unavailable(api, "killed")
        assert_unavailable(api, "still killed")
    finally:
        redis_server.start()
    assert_recovered(api, "after a restart")

    redis_server.pause()
    try:
        assert_unavailable(api, "paused")
        # A burst of requests at once does not queue behind the frozen server either.
        with ThreadPoolExecutor(8) as pool:
            burst = list(pool.map(lambda _: timed(lambda: api.client.get("/api/stats")), range(8)))
        assert [response.status_code for response, _ in burst] == [503] * 8
        assert max(took for _, took in burst) < 2 * DOWN_BUDGET_S, burst
    finally:
        redis_server.resume()
    assert_recovered(api, "after SIGCONT")
    assert api.proc is not None and api.proc.poll() is None, "the API process restarted or died"
