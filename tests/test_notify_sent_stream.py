"""Records sent at their first attempt are indexed in a stream per type and channel instead of the
sent set (lib/notification.lua): where each record lands, how pages merge streams and sets, totals
over bounds that are not whole days, stats, and the fallback to the set when the clock key is lost.
"""

from __future__ import annotations

from dataclasses import replace

import redis

from streamproc.models import Line, Order, encode_order
from streamproc.notification_store import ClaimRequest, NotificationStore, PageQuery, Settlement
from streamproc.notifications import Notification, new_record
from tests.notify_support import KEYS, assert_indexes_agree, index_entries, with_store

OWNER = "stream-test"
T0 = 1_795_000_000_000  # ms, 2026-11-18: a UTC day's start plus a bit
SENT_SET = KEYS.notification_index("success", "log", "sent")
SENT_STREAM = KEYS.notification_sent_stream("success", "log")


def record_of(order_id: str, created: int, r: redis.Redis | None = None) -> Notification:
    """A record of a new order; the order is stored too when `r` is given (a streamed record is
    found by id through its order's customer)."""
    order = Order(order_id, 7, "Name", "USD", "2026-11-18T00:00:00Z", [Line("SKU-1", "", 1, 250)])
    if r is not None:
        r.hset(KEYS.order(order_id), mapping={"s": "completed", "d": encode_order(order)})
    record = new_record(order, "completed", "log", max_attempts=3)
    record.attempts, record.created_ms = 1, created
    return record


async def first_attempt(store: NotificationStore, record: Notification, outcome: str) -> None:
    """Claim and settle a record's first attempt with outcome sent, retry (pending) or failed."""
    request = ClaimRequest(
        record.id, record.order_reference, log_offset=-1, customer_id=record.customer_id
    )
    (claim,) = await store.claim(OWNER, record.created_ms, 60_000, [request])
    assert claim.verdict == "new"
    if outcome == "sent":
        record.status, record.sent_ms = "sent", record.created_ms + 3
    elif outcome == "failed":
        record.status, record.error_message = "failed", "SMTP 550"
    else:
        record.error_message = "refused"
    due = record.created_ms + 1_000 if outcome == "retry" else 0
    assert await store.settle(OWNER, [Settlement(outcome, record, due, first=True)]) == [True]


async def later_send(store: NotificationStore, record: Notification) -> None:
    """A pending record's retry, due now, that succeeds."""
    now = record.created_ms + 2_000
    request = ClaimRequest(record.id, record.order_reference, log_offset=None)
    (claim,) = await store.claim(OWNER, now, 60_000, [request])
    assert claim.verdict == "resume"
    record.status, record.sent_ms, record.attempts = "sent", now, 2
    assert await store.settle(OWNER, [Settlement("sent", record)]) == [True]


def test_first_sends_go_to_the_stream_and_pages_merge_it_with_the_sets(
    redis_url: str, r: redis.Redis
) -> None:
    outcomes = ["sent", "retry", "sent", "failed", "sent", "sent"]
    records = [record_of(f"S{n}", T0 + 10 * n, r) for n in range(len(outcomes))]

    async def work(store: NotificationStore) -> dict[str, object]:
        for record, outcome in zip(records, outcomes, strict=True):
            await first_attempt(store, record, outcome)
        await later_send(store, records[1])  # pending -> sent after its first attempt

        async def ids(query: PageQuery) -> tuple[list[str], set[int]]:
            got: list[str] = []
            totals = set()
            cursor = None
            while True:
                page = await store.page(replace(query, cursor=cursor))
                got += [item.id for item in page.items]
                totals.add(page.total)
                if page.next_cursor is None:
                    return got, totals
                cursor = int(page.next_cursor)

        return {
            "all": await ids(PageQuery(limit=2)),
            "sent": await ids(PageQuery(status="sent", limit=2)),
            # Not whole days: the stream's entries are counted, not read from the days hash.
            "window": await ids(PageQuery(status="sent", from_ms=T0 + 5, until_ms=T0 + 45)),
            "got": await store.get([records[0].id, records[1].id]),
            # A cursor below every score (the API takes 0) and a cutoff at 0: empty, no error.
            "below": await store.page(PageQuery(cursor=0)),
            "expired": await store.expire(0),
            "stats": await store.stats(T0 - T0 % 86_400_000),
        }

    seen = with_store(redis_url, work)
    ids = [record.id for record in records]
    # Where each record is: first sends in the stream, the late one and the failed in sets.
    assert [e["i"] for _, e in r.xrange(SENT_STREAM)] == ["S0", "S2", "S4", "S5"]
    assert r.zrange(SENT_SET, 0, -1) == [ids[1]]
    assert r.zrange(KEYS.notification_index("success", "log", "failed"), 0, -1) == [ids[3]]
    assert_indexes_agree(r)
    # Newest first by creation whatever the index, every page but the last full, exact totals.
    assert seen["all"] == (ids[::-1], {6})
    assert seen["sent"] == ([ids[5], ids[4], ids[2], ids[1], ids[0]], {5})
    assert seen["window"] == ([ids[4], ids[2], ids[1]], {3})
    below = seen["below"]
    assert (below.items, below.next_cursor, below.total) == ([], None, 6)  # type: ignore[attr-defined]
    assert seen["expired"] == 0
    # A streamed record's creation time comes from its customer's set.
    assert [g.created_ms for g in seen["got"]] == [T0, T0 + 10]  # type: ignore[union-attr]
    stats = seen["stats"]
    assert stats.total(status="sent") == 5 and stats.total() == 6  # type: ignore[attr-defined]
    assert stats.since == 6  # type: ignore[attr-defined]
    assert index_entries(r)[ids[0]] == (("success", "log", "sent"), T0 * 1000)


def test_a_lost_clock_sends_an_older_score_to_the_set(redis_url: str, r: redis.Redis) -> None:
    """The stream takes only ids above its last: when the clock key is gone and a record's score
    is not, the record is indexed in the sent set, and nothing is lost or misordered."""
    newer, older = record_of("N1", T0 + 500), record_of("N2", T0 + 100)

    async def work(store: NotificationStore) -> list[str]:
        await first_attempt(store, newer, "sent")
        r.delete(KEYS.notification_clock)
        await first_attempt(store, older, "sent")
        return [item.id for item in (await store.page(PageQuery())).items]

    listed = with_store(redis_url, work)
    assert [e["i"] for _, e in r.xrange(SENT_STREAM)] == ["N1"]
    assert r.zrange(SENT_SET, 0, -1) == [older.id]
    assert listed == [newer.id, older.id]
    assert_indexes_agree(r)
