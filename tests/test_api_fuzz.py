"""Property-based fuzzing of the live API from its own /openapi.json (schemathesis).

A real `streamproc api` process serves data made by the real pipeline: sample.csv ingested and
consumed, one order out of stock, one poisoned into the dead-letter stream. Schemathesis reads the
schema the server publishes and, for every operation, sends a bounded, deterministic set of
requests: the schema's examples, its coverage cases (boundaries, missing and wrongly typed
values) and Hypothesis-generated ones, both valid (positive) and invalid (negative). Every
response must be no 5xx, a documented status and content type, match its documented schema, and
invalid input must be refused with a 4xx. Write endpoints are called with the bearer token, then
again with none and with a wrong one (must be 401). Random ids almost never exist, so a second test
drives the same operations with the ids of real orders and dead letters, for the 200/202/404/409
answers and health's 503.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import schemathesis
from requests.structures import CaseInsensitiveDict
from schemathesis import Case, GenerationMode
from schemathesis.checks import (
    allow_header_conformance,
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    not_a_server_error,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)
from schemathesis.config import HealthCheck
from schemathesis.schemas import BaseSchema

from tests.api_support import LiveApi, keep_ranges_in_bounds
from tests.helpers import REPO_ROOT
from tests.support import KEYS, Pipeline, cli, export

MAX_EXAMPLES = 60  # Hypothesis-generated cases per operation, on top of examples and coverage
POISON = "1005"  # every stage raises on it: dead-lettered by reserve, then by notify
OUT_OF_STOCK = "SKU-007"  # order 1009 asks for one: it fails at reserve
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    ignored_auth,
    unsupported_method,
    allow_header_conformance,
]


@dataclass
class Live:
    """The running API, the schema it serves, and what the pipeline left behind."""

    api: LiveApi
    schema: BaseSchema
    orders: dict[str, str]  # order id -> state
    env: dict[str, str]


@pytest.fixture
def live(sp_env: dict[str, str], tmp_path: Path) -> Iterator[Live]:
    env = dict(
        sp_env,
        STREAMPROC_LOG_LEVEL="WARNING",
        STREAMPROC_PAYMENT_SEED="11",
        STREAMPROC_PAYMENT_SUCCESS_RATE="0.7",
        STREAMPROC_MAX_DELIVERIES="2",
    )
    cli(["stock", "set", OUT_OF_STOCK, "0"], env)
    cli(["ingest", str(REPO_ROOT / "sample.csv")], env)
    pipeline = Pipeline(dict(env, STREAMPROC_FAULT_POISON=POISON), tmp_path)
    pipeline.start("all")
    pipeline.wait_drained(30)
    orders = {order_id: row["state"] for order_id, row in export(env).items()}
    api = LiveApi(env, tmp_path / "api.log").start()
    try:
        schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
        # too_slow times Hypothesis's own data generation, which a busy 2-core runner can trip.
        schema.config.update(
            base_url=api.url, request_timeout=10, suppress_health_check=[HealthCheck.too_slow]
        )
        keep_ranges_in_bounds(schema)
        schema.config.generation.update(
            modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
            max_examples=MAX_EXAMPLES,
            deterministic=True,
            database="none",
        )
        yield Live(api, schema, orders, env)
    finally:
        api.stop()


@pytest.fixture
def api_schema(live: Live, request: pytest.FixtureRequest) -> BaseSchema:
    # schemathesis 4.32's lazy loader reads `node._nodeid`, which pytest 9.2 no longer has.
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid
    return live.schema


fuzzed = schemathesis.pytest.from_fixture("api_schema")


@fuzzed.parametrize()
def test_every_operation_survives_fuzzing(case: Case, live: Live) -> None:
    case.call_and_validate(headers=live.api.auth(), checks=CHECKS)
    if not case.operation.definition.raw.get("security"):
        return
    if case.method.upper() != case.operation.method.upper():
        return  # an undeclared method: 405 before auth, already checked above
    # The same request with no credentials, then a wrong token: refused before the input is read.
    headers = {k: v for k, v in case.headers.items() if k.lower() != "authorization"}
    for auth in ({}, {"Authorization": "Bearer not-the-token"}):
        bare_case = case.derive(headers=CaseInsensitiveDict({**headers, **auth}))
        bare = bare_case.call()
        bare_case.validate_response(bare, checks=CHECKS)
        if bare.status_code == 404:
            # Only the router may say so (a path value with "/" in it matches no route).
            assert bare.json()["message"] == "Not found.", bare.text
        else:
            assert bare.status_code in (401, 403), bare.text


def call(live: Live, method: str, path: str, status: int, auth: bool = False, **parts: Any) -> Any:
    """One hand-made request through the schema's operation, with every check; its `data`."""
    case = live.schema[path][method].Case(**parts)
    # A 503 asked for on purpose (health of a broken pipeline) is no server error; the rest stands.
    checks = [c for c in CHECKS if c is not not_a_server_error] if status == 503 else CHECKS
    response = case.call_and_validate(headers=live.api.auth() if auth else None, checks=checks)
    assert response.status_code == status, response.text
    return response.json().get("data")


def test_real_ids_get_documented_answers(live: Live, r: redis.Redis) -> None:
    assert live.orders[POISON] == "dead_lettered"
    assert live.orders["1009"] == "failed"
    for order_id, state in live.orders.items():
        order = call(
            live, "GET", "/api/orders/{order_id}", 200, path_parameters={"order_id": order_id}
        )
        assert (order["order_id"], order["status"]) == (order_id, state)
    stats = call(live, "GET", "/api/stats", 200, query={"currency": "usd"})
    assert stats["orders"]["total"] == len(live.orders)
    assert call(live, "GET", "/api/streams", 200)["dead_letters"] == 2
    assert call(live, "GET", "/api/health", 200)["status"] in ("ok", "degraded")

    # Page through the dead letters one at a time, then one stage only.
    letters, cursor = [], None
    while True:
        query: dict[str, Any] = {"limit": 1} if cursor is None else {"limit": 1, "cursor": cursor}
        page = call(live, "GET", "/api/dlq", 200, query=query)
        letters += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [(x["stage"], x["order_id"]) for x in letters] == [
        ("reserve", POISON),
        ("notify", POISON),
    ]
    reserve, notify = letters
    only = call(live, "GET", "/api/dlq", 200, query={"stage": "notify"})
    assert [x["id"] for x in only["items"]] == [notify["id"]]

    retry = "/api/dlq/{id}/retry"
    call(live, "POST", retry, 401, path_parameters={"id": notify["id"]})
    done = call(live, "POST", retry, 202, auth=True, path_parameters={"id": notify["id"]})
    assert done["id"] == notify["id"]
    call(live, "POST", retry, 404, auth=True, path_parameters={"id": notify["id"]})
    # Re-submitted since: the order is no longer the one this letter dead-lettered.
    cli(["ingest", "--force", str(REPO_ROOT / "sample.csv")], live.env)
    call(live, "POST", retry, 409, auth=True, path_parameters={"id": reserve["id"]})
    # A stage without its consumer group: health answers 503, with the report.
    r.xgroup_destroy(KEYS.stream("rollback"), "rollback")
    assert call(live, "GET", "/api/health", 503)["status"] == "fail"
