"""The notification API over real HTTP (SPEC §6, §7): every filter and their combinations, paging,
stats against counts of the stored records, resend, retention and the preferences endpoints.

The records are made through the store's own scripts (claim, then settle: a first attempt's record
is created by its settlement), with creation times chosen by the test so the date filters have days
to tell apart.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from consumers.notify import NotifyHandler
from streamproc.clock import now_ms
from streamproc.connection import async_client
from streamproc.context import StageContext
from streamproc.models import Line, Order, encode_order
from streamproc.notification_store import ClaimRequest, NotificationStore, Settlement
from streamproc.notifications import new_record
from streamproc.settings import Settings
from tests.api_support import LiveApi
from tests.notify_support import KEYS, all_records, assert_indexes_agree, with_store

OWNER = "test-maker"
DAY_MS = 86_400_000
FIRST_DAY = date(2025, 11, 3)
STATES = ("completed", "completed", "failed", "rolled_back", "dead_lettered")
CUSTOMERS = (11, 12, 13)
PAGE = 7


def day_ms(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)


@dataclass(frozen=True)
class Made:
    """What the test made: the truth the API is checked against."""

    id: str
    kind: str
    channel: str
    status: str
    customer: int
    created_ms: int


def make_records(url: str, old: int, today: int, seed: int = 606) -> list[Made]:
    """`old` orders' records spread over six days from FIRST_DAY, then `today` orders' records
    created now; each order on log, email or both, each record sent, failed or pending."""
    rng = random.Random(seed)
    start = day_ms(FIRST_DAY)
    plan = [start + (n * 6 * DAY_MS) // old for n in range(old)] + [now_ms()] * today

    async def work(store: NotificationStore) -> list[Made]:
        made: list[Made] = []
        for n, created in enumerate(plan):
            customer = rng.choice(CUSTOMERS)
            order = Order(f"N{n:03d}", customer, "Name", "USD", "2025-11-03T00:00:00Z",
                          [Line("SKU-1", "", 1, 100 + n)])  # fmt: skip
            state = rng.choice(STATES)
            # The order is stored as the pipeline leaves it: a record kept in its sent stream is
            # found by id through its order's customer.
            await store.client.hset(
                KEYS.order(order.order_id), mapping={"s": state, "d": encode_order(order)}
            )
            for channel in rng.choice((("log",), ("email",), ("log", "email"))):
                record = new_record(order, state, channel, max_attempts=3)
                record.attempts, record.created_ms = 1, created
                first = ClaimRequest(record.id, order.order_id, log_offset=-1, customer_id=customer)
                (claim,) = await store.claim(OWNER, created, 60_000, [first])
                assert claim.verdict == "new"
                outcome = rng.choice(("sent", "failed", "pending"))
                if outcome == "sent":
                    record.status, record.sent_ms = "sent", created + 1_500
                    settlement = Settlement("sent", record, first=True)
                elif outcome == "failed":
                    record.status, record.error_message = "failed", "SMTP 550: no such mailbox"
                    settlement = Settlement("failed", record, first=True)
                else:
                    record.error_message = "SMTP connection failed: Connection refused"
                    settlement = Settlement("retry", record, created + 60_000, first=True)
                assert await store.settle(OWNER, [settlement]) == [True]
                made.append(
                    Made(record.id, record.notification_type, channel, outcome, customer, created)
                )
        return made

    return with_store(url, work)


@pytest.fixture
def api(sp_env: dict[str, str], tmp_path: Path) -> Iterator[LiveApi]:
    live = LiveApi(dict(sp_env, STREAMPROC_LOG_LEVEL="WARNING"), tmp_path / "api.log").start()
    try:
        yield live
    finally:
        assert live.stop() == 0


def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()["data"]


def errors(response: Any, status: int = 422) -> dict[str, list[str]]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False
    return dict(body["errors"])


def page_through(api: LiveApi, query: dict[str, Any]) -> tuple[list[str], set[int]]:
    """Every id a listing returns, page by page (PAGE at a time), and the totals it reported."""
    ids: list[str] = []
    totals: set[int] = set()
    cursor = None
    while True:
        params = dict(query, limit=PAGE) | ({"cursor": cursor} if cursor else {})
        page = ok(api.client.get("/api/notifications", params=params))
        totals.add(page["total"])
        ids += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        assert len(page["items"]) == PAGE or cursor is None, page
        if cursor is None:
            return ids, totals


def test_every_filter_combination_pages_like_the_records_say(
    redis_url: str, r: redis.Redis, api: LiveApi
) -> None:
    made = make_records(redis_url, old=60, today=4)
    assert {m.status for m in made} == {"sent", "failed", "pending"}
    assert {m.channel for m in made} == {"log", "email"} and len({m.customer for m in made}) == 3
    assert_indexes_agree(r)
    newest_first = made[::-1]
    d1, d3, d4 = (FIRST_DAY + timedelta(days=n) for n in (1, 3, 4))
    date_ranges: list[tuple[date | None, date | None]] = [(None, None), (d1, None), (None, d3),
                                                          (d1, d4)]  # fmt: skip
    checked = 0
    for kind, channel, status, customer, (start, end) in itertools.product(
        (None, "success", "failed"),
        (None, "log", "email"),
        (None, "pending", "sent", "failed"),
        (None, 12),
        date_ranges,
    ):
        query: dict[str, Any] = {
            k: v
            for k, v in {
                "type": kind,
                "channel": channel,
                "status": status,
                "customer_id": customer,
                "from_date": start and start.isoformat(),
                "to_date": end and end.isoformat(),
            }.items()
            if v is not None
        }
        expected = [
            m.id
            for m in newest_first
            if kind in (None, m.kind)
            and channel in (None, m.channel)
            and status in (None, m.status)
            and customer in (None, m.customer)
            and (start is None or m.created_ms >= day_ms(start))
            and (end is None or m.created_ms < day_ms(end + timedelta(days=1)))
        ]
        ids, totals = page_through(api, query)
        assert ids == expected, query
        assert totals == {len(expected)}, query
        checked += bool(expected)
    assert checked > 200  # most combinations match something: the comparison means something

    # One item in full.
    sample = next(m for m in newest_first if m.status == "pending")
    query = {"customer_id": sample.customer, "status": "pending", "limit": 500}
    items = {i["id"]: i for i in ok(api.client.get("/api/notifications", params=query))["items"]}
    item = items[sample.id]
    order_id = sample.id.partition(":")[0]
    total = 100 + int(order_id[1:])
    assert item["order_reference"] == order_id
    assert (item["notification_type"], item["channel"], item["status"]) == (
        sample.kind,
        sample.channel,
        "pending",
    )
    assert item["total_amount"] == total / 100 and item["currency"] == "USD"
    assert item["message"].startswith(f"Order {order_id} ")
    assert (item["attempts"], item["sent_at"]) == (1, None)
    assert item["error_message"] == "SMTP connection failed: Connection refused"
    created = datetime.fromtimestamp(sample.created_ms / 1000, UTC)
    millis = f"{created.microsecond // 1000:03d}"
    assert item["created_at"] == created.strftime("%Y-%m-%dT%H:%M:%S.") + millis + "Z"
    due = datetime.fromisoformat(item["next_attempt_at"]).timestamp() * 1000
    assert due == pytest.approx(sample.created_ms + 60_000, abs=1)

    # Recent: the newest, across everything.
    recent = ok(api.client.get("/api/notifications/recent", params={"limit": 5}))
    assert [i["id"] for i in recent] == [m.id for m in newest_first[:5]]
    assert len(ok(api.client.get("/api/notifications/recent"))) == 10

    # Stats equal counts over the stored records themselves.
    records = all_records(r)
    stats = ok(api.client.get("/api/notifications/stats"))
    today = day_ms(datetime.now(UTC).date())
    assert stats == {
        "total": len(records),
        "success": sum(x.notification_type == "success" for x in records.values()),
        "failed": sum(x.notification_type == "failed" for x in records.values()),
        "sent": sum(x.status == "sent" for x in records.values()),
        "pending": sum(x.status == "pending" for x in records.values()),
        "failed_sends": sum(x.status == "failed" for x in records.values()),
        "by_channel": {
            "log": sum(x.channel == "log" for x in records.values()),
            "email": sum(x.channel == "email" for x in records.values()),
        },
        "today": sum(x.created_ms >= today for x in records.values()),
    }
    assert stats["today"] == sum(m.created_ms >= today for m in made) > 0
    assert stats["total"] == len(made)


def test_listing_refuses_bad_filters_and_cursors(api: LiveApi) -> None:
    get = api.client.get
    reversed_range = {"from_date": "2025-11-05", "to_date": "2025-11-04"}
    assert errors(get("/api/notifications", params=reversed_range)) == {
        "to_date": ["must be on or after from_date"]
    }
    for field, value in (
        ("type", "bogus"),
        ("channel", "sms"),
        ("status", "lost"),
        ("customer_id", "0"),
        ("cursor", "abc"),
        ("limit", "501"),
        ("from_date", "2025-02-30"),
    ):
        assert set(errors(get("/api/notifications", params={field: value}))) == {field}
    assert set(errors(get("/api/notifications/recent", params={"limit": "0"}))) == {"limit"}
    assert errors(get("/api/notifications/order/no such"), 422)
    assert errors(get("/api/notifications/order/UNKNOWN-1"), 404) == {}
    empty = ok(get("/api/notifications"))
    assert empty == {"items": [], "next_cursor": None, "total": 0}
    assert ok(get("/api/notifications/stats"))["by_channel"] == {"log": 0, "email": 0}


def run_due(url: str, log_path: Path) -> int:
    """One round of a notify consumer's scheduled work (what its schedule loop does)."""

    async def main() -> int:
        client = async_client(url)
        try:
            settings = Settings(redis_url=url, notifications_log=log_path)
            return await NotifyHandler(StageContext.build(settings, client)).run_due(100)
        finally:
            await client.aclose()

    return asyncio.run(main())


def test_resend_only_failed_records_as_one_more_attempt(
    redis_url: str, r: redis.Redis, api: LiveApi, tmp_path: Path
) -> None:
    made = make_records(redis_url, old=0, today=12, seed=7)
    by_status = {s: [m for m in made if m.status == s] for s in ("sent", "failed", "pending")}
    failed_log = next(m for m in by_status["failed"] if m.channel == "log")
    resend = "/api/notifications/{}/resend"
    before = ok(api.client.get("/api/notifications/stats"))

    assert errors(api.client.post(resend.format(failed_log.id)), 401) == {}
    malformed = api.client.post(resend.format("nope:success:sms"), headers=api.auth())
    assert errors(malformed) == {
        "id": ["must be a notification id: <order id>:<success|failed>:<log|email>"]
    }
    unknown = api.client.post(resend.format("N999:success:log"), headers=api.auth())
    assert errors(unknown, 404) == {}
    sent = api.client.post(resend.format(by_status["sent"][0].id), headers=api.auth())
    assert errors(sent, 409) == {} and "sent already" in sent.json()["message"]
    pending = api.client.post(resend.format(by_status["pending"][0].id), headers=api.auth())
    assert errors(pending, 409) == {} and "pending" in pending.json()["message"]

    accepted = ok(api.client.post(resend.format(failed_log.id), headers=api.auth()), 202)
    assert (accepted["id"], accepted["status"]) == (failed_log.id, "pending")
    assert accepted["attempts"] == 1  # counted when the attempt is made
    assert accepted["error_message"] == "SMTP 550: no such mailbox"  # the last error, until sent
    due_ms = datetime.fromisoformat(accepted["next_attempt_at"]).timestamp() * 1000
    assert abs(due_ms - now_ms()) < 5_000
    again = api.client.post(resend.format(failed_log.id), headers=api.auth())
    assert errors(again, 409) == {}
    after = ok(api.client.get("/api/notifications/stats"))
    assert after["failed_sends"] == before["failed_sends"] - 1
    assert after["pending"] == before["pending"] + 1
    assert_indexes_agree(r)

    # A notify consumer makes the attempt: the same record, one more attempt, sent.
    log_path = tmp_path / "notifications.log"
    assert run_due(redis_url, log_path) >= 1
    order_id = failed_log.id.partition(":")[0]
    views = ok(api.client.get(f"/api/notifications/order/{order_id}"))
    (view,) = [v for v in views if v["id"] == failed_log.id]
    assert (view["status"], view["attempts"], view["error_message"]) == ("sent", 2, None)
    assert view["sent_at"] is not None and view["next_attempt_at"] is None
    assert log_path.read_text().count(f'"id":"{failed_log.id}"') == 1
    assert len([rid for rid in all_records(r) if rid == failed_log.id]) == 1
    assert_indexes_agree(r)


def test_retention_drops_old_records_with_every_index_entry(
    redis_url: str, r: redis.Redis, tmp_path: Path
) -> None:
    made = make_records(redis_url, old=30, today=3, seed=99)
    recent = {m.id for m in made if m.created_ms > now_ms() - DAY_MS}
    assert recent and len(recent) < len(made)
    # A lease left on an old record (its consumer died) goes with it.
    old_id = next(m.id for m in made if m.id not in recent)
    r.hset(KEYS.notification_leases, old_id, f"gone|{now_ms() - 1}")

    async def expire(store: NotificationStore) -> int:
        settings = Settings(redis_url=redis_url, notification_retention_days=7)
        client = store.client
        return await NotifyHandler(StageContext.build(settings, client)).housekeeping()

    assert with_store(redis_url, expire) == len(made) - len(recent)
    assert set(all_records(r)) == recent
    assert_indexes_agree(r)  # no index, customer set or schedule entry points at a dropped one
    assert not r.hexists(KEYS.notification_leases, old_id)
    stats = with_store(redis_url, lambda store: store.stats(0))
    assert stats.total() == len(recent)

    # Retention 0 keeps everything.
    async def keep(store: NotificationStore) -> int:
        settings = Settings(redis_url=redis_url, notification_retention_days=0)
        return await NotifyHandler(StageContext.build(settings, store.client)).housekeeping()

    assert with_store(redis_url, keep) == 0
    assert set(all_records(r)) == recent


def test_preferences_read_default_then_replaced_and_validated(api: LiveApi) -> None:
    url = "/api/customers/{}/notification-preferences"
    default = ok(api.client.get(url.format(42)))
    assert default == {
        "customer_id": 42,
        "channels": ["log"],
        "types": ["success", "failed"],
        "email": None,
        "is_default": True,
        "updated_at": None,
    }
    wanted = {"channels": ["email"], "types": ["failed"], "email": "jane@example.com"}
    assert errors(api.client.put(url.format(42), json=wanted), 401) == {}
    stored = ok(api.client.put(url.format(42), json=wanted, headers=api.auth()))
    assert (stored["channels"], stored["types"], stored["email"], stored["is_default"]) == (
        ["email"],
        ["failed"],
        "jane@example.com",
        False,
    )
    assert stored["updated_at"].endswith("Z")
    assert ok(api.client.get(url.format(42))) == stored
    assert ok(api.client.get(url.format(43)))["is_default"] is True  # others keep the defaults
    # Nothing at all: a customer may opt out of every notification.
    nothing = {"channels": [], "types": []}
    quiet = ok(api.client.put(url.format(44), json=nothing, headers=api.auth()))
    assert (quiet["channels"], quiet["types"], quiet["email"]) == ([], [], None)

    bad = {
        "channels": (["sms"], ["channels"]),
        "types": (["log"], ["types"]),
    }
    for field, (value, where) in bad.items():
        body = dict(wanted, **{field: value})
        refused = api.client.put(url.format(42), json=body, headers=api.auth())
        assert set(errors(refused)) == set(where)
    for body, field in (
        ({"channels": ["log", "log"], "types": ["success"]}, "channels"),
        ({"channels": ["log"], "types": ["failed", "failed"]}, "types"),
        ({"channels": ["log"], "types": ["failed"], "email": "not-an-address"}, "email"),
        ({"channels": ["log"], "types": ["failed"], "email": "a b@example.com"}, "email"),
        ({"channels": ["log"]}, "types"),
        ({"types": ["failed"]}, "channels"),
    ):
        assert field in errors(api.client.put(url.format(42), json=body, headers=api.auth())), body
    assert set(errors(api.client.put(url.format(0), json=wanted, headers=api.auth()))) == {"id"}
    assert ok(api.client.get(url.format(42))) == stored  # every refusal left it as it was
