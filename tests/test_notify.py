"""The notify stage's log channel is exactly-once across crashes (SPEC §3.2 INV-N, §6).

A crash is simulated by leaving the notification as the handler leaves it mid-way through a first
attempt: no record yet (the record is created once the attempt is settled), only the lease of a
consumer that is gone (its lease has run out) holding the log's offset, with or without its line
appended. The redelivered entry's claim says "recover" and looks for the line from that offset.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import redis

from consumers.notify import NotifyHandler
from streamproc.clock import now_ms
from streamproc.connection import async_client
from streamproc.context import StageContext
from streamproc.keys import Keys
from streamproc.models import Line, Order
from streamproc.notification_store import LEASES_PIN, ClaimRequest, NotificationStore, Settlement
from streamproc.notifications import (
    LogChannel,
    Notification,
    encode_record,
    new_record,
)
from streamproc.settings import Settings
from streamproc.transport import Decision, Message
from tests.notify_support import (
    all_records,
    assert_indexes_agree,
    index_entries,
    leases,
    with_store,
)

KEYS = Keys()
DEAD = "dead-consumer"


def make_order(order_id: str) -> Order:
    return Order(
        order_id, 501, "John Doe", "USD", "2025-11-10T10:15:23Z", [Line("SKU-1", "", 2, 2550)]
    )


def terminal(order_id: str, state: str = "completed") -> Message:
    return Message(f"1-{len(order_id)}".encode(), order_id, 1, state, make_order(order_id))


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "logs" / "notifications.log"


def notify(url: str, log_path: Path, batch: list[Message]) -> list[Decision]:
    """Run the notify handler once over `batch`, as a fresh process would."""
    settings = Settings(redis_url=url, notifications_log=log_path)

    async def main() -> list[Decision]:
        client = async_client(url)
        try:
            return await NotifyHandler(StageContext.build(settings, client)).handle(batch)
        finally:
            await client.aclose()

    return asyncio.run(main())


def log_ids(log_path: Path) -> list[str]:
    if not log_path.exists():
        return []
    return [json.loads(line)["id"] for line in log_path.read_text().splitlines()]


def stored(r: redis.Redis, record_id: str) -> Notification:
    """The record as stored: in the hash, or in its sent stream when sent at its first attempt."""
    records = all_records(r)
    assert record_id in records, f"no record {record_id}"
    return records[record_id]


def leave_in_flight(
    url: str, channel: LogChannel, order_id: str, written: bool, state: str = "completed"
) -> Notification:
    """What a notify process that died before its "sent" mark leaves behind: the first
    attempt's lease, with the log's offset, held by a consumer long gone, and no record."""
    record = new_record(make_order(order_id), state, channel.name, max_attempts=5)
    record.attempts = 1
    record.log_offset = channel.size()
    request = ClaimRequest(
        record.id, order_id, log_offset=record.log_offset, customer_id=record.customer_id
    )
    record.created_ms = now_ms() - 60_000

    async def claim(store: NotificationStore) -> None:
        (claimed,) = await store.claim(DEAD, record.created_ms, 1_000, [request])
        assert claimed.verdict == "new"

    with_store(url, claim)
    with redis.Redis.from_url(url) as check:
        assert not check.hexists(KEYS.notifications, record.id)  # not written before the settle
    if written:
        channel.send([record], now_ms())
    return record


def test_line_written_before_the_crash_is_not_written_again(
    redis_url: str, r: redis.Redis, log_path: Path
) -> None:
    channel = LogChannel(log_path)
    channel.send([new_record(make_order("older"), "failed", "log")], now_ms())  # before the offset
    record = leave_in_flight(redis_url, channel, "1001", written=True)
    # Another process appends after our line, before the retry.
    channel.send([new_record(make_order("later"), "completed", "log")], now_ms())

    decisions = notify(redis_url, log_path, [terminal("1001")])

    assert [d.outcome for d in decisions] == ["notified"]
    assert log_ids(log_path) == ["older:failed:log", record.id, "later:success:log"]
    after = stored(r, record.id)
    assert (after.status, after.attempts, after.error_message) == ("sent", 1, "")
    assert after.sent_at.endswith("Z")
    # Sent at its first attempt: in the sent stream, not the sent set.
    assert r.xlen(KEYS.notification_sent_stream("success", "log")) == 1
    assert r.zcard(KEYS.notification_index("success", "log", "sent")) == 0
    assert r.zcard(KEYS.notification_schedule) == 0
    assert_indexes_agree(r)


def test_line_not_written_before_the_crash_is_written_once(
    redis_url: str, r: redis.Redis, log_path: Path
) -> None:
    channel = LogChannel(log_path)
    # The other type: another record.
    channel.send([new_record(make_order("1002"), "failed", "log")], now_ms())
    record = leave_in_flight(redis_url, channel, "1002", written=False)

    notify(redis_url, log_path, [terminal("1002")])
    notify(redis_url, log_path, [terminal("1002")])  # a replayed message changes nothing

    assert log_ids(log_path) == ["1002:failed:log", record.id]
    after = stored(r, record.id)
    assert (after.status, after.attempts) == ("sent", 2)


def test_mixed_batch_each_order_exactly_once(
    redis_url: str, r: redis.Redis, log_path: Path
) -> None:
    channel = LogChannel(log_path)
    leave_in_flight(redis_url, channel, "m-written", written=True)
    leave_in_flight(redis_url, channel, "m-lost", written=False)
    batch = [terminal("m-written"), terminal("m-lost"), terminal("m-new", "rolled_back")]

    decisions = notify(redis_url, log_path, batch)

    assert [d.message for d in decisions] == batch
    assert {d.outcome for d in decisions} == {"notified"}
    ids = log_ids(log_path)
    assert sorted(ids) == ["m-lost:success:log", "m-new:failed:log", "m-written:success:log"]
    assert ids[0] == "m-written:success:log"
    fresh = stored(r, "m-new:failed:log")
    assert (fresh.status, fresh.attempts, fresh.order_status) == ("sent", 1, "rolled_back")
    assert fresh.customer_id == 501 and fresh.total_amount == "51.00"
    assert_indexes_agree(r)
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert {line["order_reference"] for line in lines} == {"m-written", "m-lost", "m-new"}


def test_already_sent_record_is_left_alone(redis_url: str, r: redis.Redis, log_path: Path) -> None:
    channel = LogChannel(log_path)
    record = leave_in_flight(redis_url, channel, "s1", written=False)
    record.status, record.sent_ms = "sent", 1_762_732_800_000  # 2025-11-10T00:00:00Z

    async def settle(store: NotificationStore) -> None:
        assert await store.settle(DEAD, [Settlement("sent", record, first=True)]) == [True]

    with_store(redis_url, settle)

    decisions = notify(redis_url, log_path, [terminal("s1")])

    assert [d.outcome for d in decisions] == ["notified"]
    assert not log_path.exists()
    assert stored(r, record.id).sent_at == "2025-11-10T00:00:00.000Z"


def test_already_written_only_looks_from_the_offset(log_path: Path) -> None:
    channel = LogChannel(log_path)
    assert channel.size() == 0
    assert not channel.already_written("x:success:log", 0)  # no log yet
    channel.send([new_record(make_order("x"), "completed", "log")], now_ms())
    offset = channel.size()
    assert offset > 0
    assert channel.already_written("x:success:log", 0)
    assert not channel.already_written("x:success:log", offset)
    # An id that is a suffix of another one's does not match it.
    assert not channel.already_written("x:success:lo", 0)
    channel.send([new_record(make_order("1x"), "completed", "log")], now_ms())
    assert not channel.already_written("x:success:log", offset)


def test_two_messages_for_one_record_in_a_batch_write_one_line(
    redis_url: str, r: redis.Redis, log_path: Path
) -> None:
    # `ingest --force` re-submits a failed order; if it fails again before notify caught up, the
    # notify stream holds two messages (attempts 1 and 2) for the same record.
    first = terminal("twice", "failed")
    second = Message(b"1-99", "twice", 2, "failed", make_order("twice"))

    decisions = notify(redis_url, log_path, [first, second])

    assert [d.outcome for d in decisions] == ["notified", "notified"]
    assert log_ids(log_path) == ["twice:failed:log"]
    assert stored(r, "twice:failed:log").status == "sent"


def test_record_leased_by_another_live_consumer_is_left_pending(
    redis_url: str, r: redis.Redis, log_path: Path
) -> None:
    """Two live consumers on one reclaimed entry: only the lease holder writes it."""
    record_id = "3003:success:log"
    # Another consumer holds a fresh lease on the record (it is sending right now).
    r.hset(KEYS.notification_leases, record_id, "other-consumer|99999999999999")
    first, second = terminal("3003"), terminal("3004")
    second.msg_id = b"2-0"  # terminal() derives ids from the length of the order id
    decisions = notify(redis_url, log_path, [first, second])
    assert [d.message.order_id for d in decisions] == ["3004"]  # 3003 stays pending
    assert log_ids(log_path) == ["3004:success:log"]
    # Once the lease has expired (its holder died), the entry is sent by whoever comes next.
    r.hset(KEYS.notification_leases, record_id, "other-consumer|1")
    decisions = notify(redis_url, log_path, [terminal("3003")])
    assert [d.outcome for d in decisions] == ["notified"]
    assert log_ids(log_path) == ["3004:success:log", record_id]
    assert stored(r, record_id).status == "sent"
    assert r.hexists(KEYS.notification_leases, record_id) is False


def test_first_attempt_writes_only_its_lease_and_is_recovered_after_a_crash(
    redis_url: str, r: redis.Redis, log_path: Path
) -> None:
    """A first attempt's claim writes the lease and nothing else; while the lease is live a second
    consumer is refused (busy), and cannot create the record; once it expired, the next claim
    recovers it with the dead attempt's offset and count, and the dead holder's late settlement is
    refused, so the record is the recoverer's alone."""
    record = new_record(make_order("r1"), "completed", "log", max_attempts=5)
    record.attempts, record.log_offset = 1, 1234
    request = ClaimRequest(record.id, "r1", log_offset=1234, customer_id=record.customer_id)
    start = now_ms()

    async def work(store: NotificationStore) -> None:
        (first,) = await store.claim("a", start, 1_000, [request])
        assert first.verdict == "new"
        assert all_records(r) == {}
        assert r.hget(KEYS.notification_leases, record.id) == f"a|{start + 1_000}|1234|1"
        assert r.keys(KEYS.notification_index_prefix + "*") == []
        assert r.keys(KEYS.notification_customer_prefix + "*") == []
        assert r.zcard(KEYS.notification_schedule) == 0
        assert r.get(KEYS.notification_clock) is None
        # A live lease: the other consumer neither sends nor records anything.
        (busy,) = await store.claim("b", start + 999, 1_000, [request])
        assert busy.verdict == "busy"
        record.created_ms = start
        assert await store.settle("b", [Settlement("sent", record, first=True)]) == [False]
        # Expired: taken over, with what the dead attempt left in its lease.
        later = ClaimRequest(record.id, "r1", log_offset=5678, customer_id=record.customer_id)
        (taken,) = await store.claim("b", start + 1_001, 1_000, [later])
        assert (taken.verdict, taken.dead_offset, taken.dead_attempts) == ("recover", 1234, 1)
        assert r.hget(KEYS.notification_leases, record.id) == f"b|{start + 2_001}|5678|2"
        record.status, record.sent_ms = "sent", start + 5
        assert await store.settle("a", [Settlement("sent", record, first=True)]) == [False]
        assert all_records(r) == {}
        record.attempts, record.log_offset = 2, -1
        assert await store.settle("b", [Settlement("sent", record, first=True)]) == [True]
        # Settled once: a second settlement or a replayed create changes nothing.
        assert await store.settle("b", [Settlement("sent", record, first=True)]) == [False]
        (done,) = await store.claim("c", start + 3_000, 1_000, [later])
        assert done.verdict == "done"

    with_store(redis_url, work)
    after = stored(r, record.id)
    assert (after.status, after.attempts, after.log_offset) == ("sent", 2, -1)
    assert leases(r) == {}
    assert index_entries(r) == {record.id: (("success", "log", "sent"), start * 1000)}
    (entry,) = r.xrange(KEYS.notification_sent_stream("success", "log"))
    # Scored by the claim's time, and its text in the entry, not the hash.
    assert entry == (f"{start}-0", {"i": "r1", "r": encode_record(after).decode()})
    assert r.hlen(KEYS.notifications) == 0
    assert_indexes_agree(r)


def test_first_attempt_created_pending_or_failed_with_unique_scores(
    redis_url: str, r: redis.Redis
) -> None:
    """Settled first attempts land in the index of their outcome and in their customer's set; a
    pending one is due on the schedule; scores stay unique when created in the same ms."""
    now = now_ms()
    records = [
        new_record(make_order(f"u{n}"), "completed", "email", max_attempts=3) for n in range(3)
    ]

    async def work(store: NotificationStore) -> list[bool]:
        requests = [
            ClaimRequest(rec.id, rec.order_reference, log_offset=-1, customer_id=rec.customer_id)
            for rec in records
        ]
        claims = await store.claim("a", now, 60_000, requests)
        assert [c.verdict for c in claims] == ["new"] * 3
        for rec in records:
            rec.attempts, rec.created_ms = 1, now
        records[0].status, records[0].sent_ms = "sent", now
        records[1].error_message = "SMTP connection failed: Connection refused"
        records[2].status, records[2].error_message = "failed", "SMTP 550: no such mailbox"
        return await store.settle(
            "a",
            [
                Settlement("sent", records[0], first=True),
                Settlement("retry", records[1], now + 2_000, first=True),
                Settlement("failed", records[2], first=True),
            ],
        )

    assert with_store(redis_url, work) == [True, True, True]
    assert_indexes_agree(r)
    assert r.zscore(KEYS.notification_schedule, records[1].id) == now + 2_000
    scores = [
        r.zscore(KEYS.notification_customer(501), rec.id) for rec in records
    ]  # one customer for all
    assert scores == [now * 1000, now * 1000 + 1, now * 1000 + 2]
    assert r.get(KEYS.notification_clock) == str(now * 1000 + 2)
    assert leases(r) == {}


def test_message_whose_first_attempt_was_taken_over_is_left_pending(
    redis_url: str, r: redis.Redis, log_path: Path
) -> None:
    """A consumer that outlived its lease and lost it to another does not ack the entry: if the
    other one dies too, the entry is still there to bring the record back."""
    settings = Settings(redis_url=redis_url, notifications_log=log_path)
    message = terminal("slow")

    async def main() -> list[Decision]:
        client = async_client(redis_url)
        try:
            handler = NotifyHandler(StageContext.build(settings, client))
            claim = handler.store.claim

            async def claim_then_lose(*args: Any) -> Any:
                claims = await claim(*args)
                # Another consumer takes the lease over while this one is sending.
                r.hset(KEYS.notification_leases, "slow:success:log", "other|99999999999999|0|2")
                return claims

            handler.store.claim = claim_then_lose  # type: ignore[method-assign]
            return await handler.handle([message])
        finally:
            await client.aclose()

    assert asyncio.run(main()) == []
    assert all_records(r) == {}  # the holder's to create
    assert log_ids(log_path) == ["slow:success:log"]


def _calls(r: redis.Redis, command: str) -> int:
    """How many times the server ran `command` since its statistics were reset."""
    return int(r.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


def test_a_batch_takes_and_releases_its_leases_in_one_write_on_a_pinned_hash(
    redis_url: str, r: redis.Redis
) -> None:
    """A claim takes a batch's leases in one HSET and a settlement releases them in one HDEL
    (one AOF command per batch, not one per record). The first claim pins the leases hash (a
    field no record id equals, with a value too long for the compact encoding), so the server
    keeps it as a hashtable, whose lookups do not scan; it stays one once every lease is
    settled, and retention, which lists the leases, neither takes the pin for a lease nor drops
    it."""
    now = now_ms()
    records = [new_record(make_order(f"pin{i}"), "completed", "log") for i in range(3)]

    async def work(store: NotificationStore) -> list[bool]:
        requests = [
            ClaimRequest(rec.id, rec.order_reference, log_offset=0, customer_id=rec.customer_id)
            for rec in records
        ]
        r.config_resetstat()
        claims = await store.claim("a", now, 60_000, requests)
        assert [c.verdict for c in claims] == ["new"] * 3
        assert (_calls(r, "hset"), _calls(r, "hsetnx")) == (2, 0)  # the pin, then the leases
        assert r.object("encoding", KEYS.notification_leases) == "hashtable"
        assert set(leases(r)) == {rec.id for rec in records}
        for rec in records:
            rec.attempts, rec.created_ms, rec.status, rec.sent_ms = 1, now, "sent", now
        settled = await store.settle("a", [Settlement("sent", rec, first=True) for rec in records])
        assert _calls(r, "hdel") == 1
        return settled

    assert with_store(redis_url, work) == [True, True, True]
    assert leases(r) == {}
    assert r.hkeys(KEYS.notification_leases) == [LEASES_PIN]
    assert r.object("encoding", KEYS.notification_leases) == "hashtable"
    assert with_store(redis_url, lambda store: store.expire(now - 1_000)) == 0
    assert r.hkeys(KEYS.notification_leases) == [LEASES_PIN]
    assert_indexes_agree(r)


def test_retention_drops_leases_of_first_attempts_that_never_came_back(
    redis_url: str, r: redis.Redis
) -> None:
    now = now_ms()
    r.hset(KEYS.notification_leases, "old:success:log", f"gone|{now - 40 * 86_400_000}|0|1")
    r.hset(KEYS.notification_leases, "live:success:log", f"busy|{now + 1_000}|0|1")
    r.hset(KEYS.notification_leases, "recent:success:log", f"gone|{now - 1_000}|0|1")

    dropped = with_store(redis_url, lambda store: store.expire(now - 30 * 86_400_000))

    assert dropped == 0
    assert set(leases(r)) == {"live:success:log", "recent:success:log"}
