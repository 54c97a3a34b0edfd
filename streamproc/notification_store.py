"""Notification records in Redis: claim, settle, resend, retention, pages, lookups and stats.

Layout (key names in streamproc/keys.py, all in the pipeline's slot):
- `notifications`: hash id → record text (streamproc/notifications.py);
- 12 index sets, one per (type, channel, status): id → creation score. A record is in exactly one,
  moved when its status changes, in the same script; so the stats are their sizes (O(1)) and a
  filtered page merges at most 12 time-ordered sets from the cursor on;
- but a record sent at its first attempt (nearly all) is kept, text and all, in the sent stream
  of its type and channel instead of the hash and a set: appended in score order with its score
  as entry id, never changed, ~70 bytes instead of ~245. Pages merge the streams with the sets;
  their sizes per UTC day (the days hash) give totals over dates; every record is also in its
  customer's set, which is where a claim, a settlement or a lookup finds a streamed one;
- a set per customer (id → the same score), for the customer filter;
- the schedule: id → when a pending record is due (a retry, a resend, or a lease expiry);
- leases: id → owner|expiry while a consumer attempts an existing record, and
  owner|expiry|log offset|attempts while it makes a record's first attempt; plus one pin field
  (`~`, lib/notification.lua) that keeps this churning hash a hashtable, whose lookups do not
  scan.

A record is written once its first attempt is over (`settle`, op create), with that attempt's
outcome: the claim of a first attempt writes only the lease. So a record is not visible (pages,
lookups, stats) during the few ms its first attempt is in flight; if the consumer dies meanwhile,
the stream entry (acked only after the settle) is delivered again and the claim says "recover".
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aredis

from streamproc.keys import Keys
from streamproc.lua import AsyncScripts
from streamproc.metrics import ConsumerMetrics
from streamproc.models import decode_order
from streamproc.notifications import (
    CHANNELS,
    FAILED,
    PENDING,
    SCORE_PER_MS,
    SENT,
    STATUS_CODES,
    STATUSES,
    TYPES,
    Notification,
    created_ms_of,
    decode_record,
    encode_record,
    split_id,
)
from streamproc.replies import text

# The leases hash's pin field (NOTE_LEASES_PIN in lib/notification.lua): not a lease.
LEASES_PIN = "~"
COMBINATIONS: tuple[tuple[str, str, str], ...] = tuple(itertools.product(TYPES, CHANNELS, STATUSES))
# The (type, channel) of each sent stream: records sent at their first attempt.
SENT_STREAMS: tuple[tuple[str, str], ...] = tuple(itertools.product(TYPES, CHANNELS))
DAY_MS = 86_400_000
EXPIRE_BATCH = 1000
RESEND_TRIES = 3


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    """Take record `record_id` for one attempt. `log_offset` (the log's size read before the
    claim; -1 for email) makes a missing record a first attempt; None: a missing one is gone."""

    record_id: str
    order_id: str
    state: str = ""  # the state the message carries; "" skips the staleness check
    attempt: int = 1
    log_offset: int | None = None
    # Known for a first attempt: a record sent at its first attempt is kept in its sent stream,
    # not the hash, and its customer's set is where the claim finds that it exists.
    customer_id: int | None = None


@dataclass(frozen=True, slots=True)
class Claim:
    """The verdict on one request: the stored record when it is ours to resume; the log offset
    and attempt count of the attempt that died when it is ours to recover."""

    verdict: str
    stored: Notification | None = None
    dead_offset: int = -1
    dead_attempts: int = 0


@dataclass(frozen=True, slots=True)
class Settlement:
    """What one attempt did: op begin | sent | retry | failed, the record to store, due (retry).

    `first`: the record's first attempt (claim verdict new or recover): the record is created
    with this outcome, scored by `record.created_ms`.
    """

    op: str
    record: Notification
    due_ms: int = 0
    first: bool = False


@dataclass(frozen=True, slots=True)
class PageQuery:
    """Filters and paging of a listing (None = any); dates are ms bounds, `before` a cursor."""

    kind: str | None = None
    channel: str | None = None
    status: str | None = None
    customer_id: int | None = None
    from_ms: int | None = None
    until_ms: int | None = None  # exclusive
    limit: int = 50
    cursor: int | None = None


@dataclass(frozen=True, slots=True)
class Page:
    """Records newest first, the cursor of the next page (None: last page) and the total."""

    items: list[Notification]
    next_cursor: str | None
    total: int


@dataclass(frozen=True, slots=True)
class Stats:
    """Counts per (type, channel, status), and how many records were created since `since_ms`."""

    counts: dict[tuple[str, str, str], int] = field(default_factory=dict)
    since: int = 0

    def total(
        self, kind: str | None = None, channel: str | None = None, status: str | None = None
    ) -> int:
        """Records of that type, channel and status (None = any)."""
        return sum(
            n
            for (k, c, s), n in self.counts.items()
            if kind in (None, k) and channel in (None, c) and status in (None, s)
        )


class NotificationStore:
    """The notification keys of one namespace, through the notify scripts."""

    def __init__(
        self,
        client: aredis.Redis,
        scripts: AsyncScripts,
        keys: Keys,
        metrics: ConsumerMetrics | None = None,
    ) -> None:
        self.client = client
        self.scripts = scripts
        self.keys = keys
        # A consumer's: every attempt's result is counted where it is settled.
        self.metrics = metrics
        self._records = keys.notifications
        self._leases = keys.notification_leases
        self._schedule = keys.notification_schedule
        self._days = keys.notification_sent_days

    # -- consumers ------------------------------------------------------------------------------
    async def claim(
        self, owner: str, now_ms: int, lease_ms: int, requests: Sequence[ClaimRequest]
    ) -> list[Claim]:
        """Lease each request's record for one attempt, in one script (nothing else is written:
        a first attempt's record is created by its settlement)."""
        if not requests:
            return []
        keys = [self._records, self._leases, self._schedule]
        args: list[Any] = [owner, now_ms, lease_ms, self.keys.notification_customer_prefix]
        for request in requests:
            if request.log_offset is not None and request.customer_id is None:
                # Without it a record kept in its sent stream would look absent: sent again.
                raise ValueError(
                    f"claim of {request.record_id}: a first attempt needs its customer"
                )
            keys.append(self.keys.order(request.order_id))
            offset = "" if request.log_offset is None else request.log_offset
            customer = "" if request.customer_id is None else request.customer_id
            args += (request.record_id, request.state, request.attempt, offset, customer)
        reply = await self.scripts.run("notify_claim", keys, args)
        claims = []
        for request, raw_verdict, raw in zip(requests, reply[0::2], reply[1::2], strict=True):
            verdict = text(raw_verdict)
            if verdict == "resume":
                claims.append(Claim(verdict, decode_record(request.record_id, raw)))
            elif verdict == "recover":
                offset, _, attempts = text(raw).partition("|")
                claims.append(Claim(verdict, None, int(offset), int(attempts)))
            else:
                claims.append(Claim(verdict))
        return claims

    async def settle(self, owner: str, items: Sequence[Settlement]) -> list[bool]:
        """Record what each attempt did, for the records `owner` still leases; applied or not."""
        if not items:
            return []
        args: list[Any] = [
            owner,
            self.keys.notification_index_prefix,
            self.keys.notification_customer_prefix,
        ]
        for item in items:
            op = "create" if item.first else item.op
            args += (
                item.record.id,
                op,
                encode_record(item.record),
                item.due_ms,
                item.record.created_ms if item.first else 0,
            )
        keys = [
            self._records,
            self._leases,
            self._schedule,
            self.keys.notification_clock,
            self._days,
        ]
        reply = await self.scripts.run("notify_settle", keys, args)
        if self.metrics is not None:
            # sent (found written by an attempt that died before saying so, too), or failed
            # (retry later, or for good); "begin" only marks an attempt as started.
            self.metrics.notification_attempts(
                Counter(
                    (item.record.channel, SENT if item.op == SENT else FAILED)
                    for item in items
                    if item.op != "begin"
                )
            )
        return [int(x) == 1 for x in reply]

    async def due(self, now_ms: int, limit: int) -> list[str]:
        """Ids of pending records due now (retries, resends, attempts whose holder died)."""
        ids = await self.client.zrangebyscore(self._schedule, "-inf", now_ms, start=0, num=limit)
        return [text(x) for x in ids]

    async def expire(self, cutoff_ms: int) -> int:
        """Drop every record created before `cutoff_ms`, with its index entries; how many."""
        keys = [self._records, self._leases, self._schedule, self._days, *self._index_keys()]
        args = [cutoff_ms * SCORE_PER_MS, EXPIRE_BATCH, self.keys.notification_customer_prefix]
        dropped = 0
        while True:
            done = int(await self.scripts.run("notify_expire", keys, args))
            dropped += done
            if done < EXPIRE_BATCH:
                return dropped

    # -- API --------------------------------------------------------------------------------------
    async def page(self, query: PageQuery) -> Page:
        """One page of records, newest first, with the total matching the filters."""
        lo = "-inf" if query.from_ms is None else str(query.from_ms * SCORE_PER_MS)
        top = "+inf" if query.until_ms is None else f"({query.until_ms * SCORE_PER_MS}"
        hi = top if query.cursor is None else f"({query.cursor}"
        if query.customer_id is None:
            sets = self._index_keys(query.kind, query.channel, query.status)
            filters = ["", "", ""]
        else:
            sets = [self.keys.notification_customer(query.customer_id)]
            filters = [
                query.kind or "",
                query.channel or "",
                STATUS_CODES[query.status] if query.status else "",
            ]
        reply = await self.scripts.run(
            "notify_list",
            [self._records, self._schedule, self._days, *sets],
            [hi, lo, query.limit, *filters, top, self.keys.notification_index_prefix],
        )
        cursor, total, rest = text(reply[0]), int(reply[1]), reply[2:]
        rows = zip(rest[0::4], rest[1::4], rest[2::4], rest[3::4], strict=True)
        items = [self._read(text(rid), raw, score, due) for rid, score, raw, due in rows]
        return Page(items, cursor or None, total)

    async def get(self, record_ids: Sequence[str]) -> list[Notification | None]:
        """These records with their creation and due times (None where there is none)."""
        if not record_ids:
            return []
        raws = await self.client.hmget(self._records, list(record_ids))
        found = [
            (rid, decode_record(rid, raw if isinstance(raw, bytes) else raw.encode()))
            for rid, raw in zip(record_ids, raws, strict=True)
            if raw
        ]
        pipe = self.client.pipeline(transaction=False)
        for rid, record in found:
            pipe.zscore(self.index_key(rid, record.status), rid)
            pipe.zscore(self._schedule, rid)
        scores = await pipe.execute()
        by_id: dict[str, Notification] = {}
        for (rid, record), created, due in zip(found, scores[0::2], scores[1::2], strict=True):
            record.created_ms = created_ms_of(created) if created is not None else 0
            record.due_ms = int(due) if due is not None and record.status == PENDING else 0
            by_id[rid] = record
        missing = [rid for rid, raw in zip(record_ids, raws, strict=True) if not raw]
        if missing:
            by_id.update(await self._streamed(missing))
        return [by_id.get(rid) for rid in record_ids]

    async def _streamed(self, record_ids: Sequence[str]) -> dict[str, Notification]:
        """Those of these records kept in their sent streams (sent at their first attempt): the
        order's payload names the customer, whose set holds the score, which is the entry id."""
        order_ids = sorted({split_id(rid)[0] for rid in record_ids})
        pipe = self.client.pipeline(transaction=False)
        for order_id in order_ids:
            pipe.hget(self.keys.order(order_id), "d")
        payloads = await pipe.execute()
        customers = {
            order_id: decode_order(payload).customer_id
            for order_id, payload in zip(order_ids, payloads, strict=True)
            if payload
        }
        candidates = [rid for rid in record_ids if split_id(rid)[0] in customers]
        pipe = self.client.pipeline(transaction=False)
        for rid in candidates:
            pipe.zscore(self.keys.notification_customer(customers[split_id(rid)[0]]), rid)
        scores = await pipe.execute()
        scored = [(rid, int(score)) for rid, score in zip(candidates, scores, strict=True) if score]
        pipe = self.client.pipeline(transaction=False)
        for rid, score in scored:
            _, kind, channel = split_id(rid)
            entry_id = f"{score // SCORE_PER_MS}-{score % SCORE_PER_MS}"
            pipe.xrange(self.keys.notification_sent_stream(kind, channel), entry_id, entry_id)
        entries = await pipe.execute()
        found: dict[str, Notification] = {}
        for (rid, score), got in zip(scored, entries, strict=True):
            raw = got[0][1].get(b"r") if got else None
            if raw:
                found[rid] = decode_record(rid, raw, created_ms_of(score))
        return found

    async def stats(self, since_ms: int) -> Stats:
        """Records per (type, channel, status) and created since `since_ms` (a UTC day's start:
        the sent streams are counted by day): 28 O(log n) reads and the days hash, in one step."""
        if since_ms % DAY_MS:
            raise ValueError(f"stats since {since_ms}: not the start of a UTC day")
        pipe = self.client.pipeline(transaction=True)
        floor = since_ms * SCORE_PER_MS
        for combination in COMBINATIONS:
            key = self.keys.notification_index(*combination)
            pipe.zcard(key)
            pipe.zcount(key, floor, "+inf")
        for kind, channel in SENT_STREAMS:
            pipe.xlen(self.keys.notification_sent_stream(kind, channel))
        pipe.hgetall(self._days)
        replies = await pipe.execute()
        n = 2 * len(COMBINATIONS)
        sets, lengths, days = replies[:n], replies[n:-1], replies[-1]
        counts = dict(zip(COMBINATIONS, (int(x) for x in sets[0::2]), strict=True))
        for (kind, channel), length in zip(SENT_STREAMS, lengths, strict=True):
            counts[kind, channel, SENT] += int(length)
        since = sum(int(x) for x in sets[1::2])
        since_day = since_ms // DAY_MS
        for field_name, count in days.items():
            if int(text(field_name).rsplit(":", 1)[1]) >= since_day:
                since += int(count)
        return Stats(counts, since)

    async def resend(self, record_id: str, now_ms: int) -> tuple[str, Notification | None]:
        """Give a failed record one more attempt, due now: ("ok" | "missing" | status, record).

        Any status but failed is refused with that status (sent, pending). One new attempt is
        allowed whatever the retry limit: a resend is a person asking for exactly one more try.
        """
        for _ in range(RESEND_TRIES):
            (current,) = await self.get([record_id])
            if current is None:
                return "missing", None
            if current.status != FAILED:
                return current.status, current
            stored = encode_record(current)
            current.status, current.max_attempts = PENDING, current.attempts + 1
            outcome = text(
                await self.scripts.run(
                    "notify_resend",
                    [self._records, self._schedule],
                    [
                        record_id,
                        stored,
                        encode_record(current),
                        now_ms,
                        self.keys.notification_index_prefix,
                    ],
                )
            )
            if outcome == "ok":
                current.due_ms = now_ms
                return "ok", current
            if outcome == "missing":
                return "missing", None
        return "changed", None

    # -- names ----------------------------------------------------------------------------------
    def index_key(self, record_id: str, status: str) -> str:
        """The index set of record `record_id` while its status is `status`."""
        _, kind, channel = split_id(record_id)
        return self.keys.notification_index(kind, channel, status)

    def _index_keys(
        self, kind: str | None = None, channel: str | None = None, status: str | None = None
    ) -> list[str]:
        """The index sets and sent streams holding the records of that type, channel and status
        (None = any)."""
        sets = [
            self.keys.notification_index(k, c, s)
            for k, c, s in COMBINATIONS
            if kind in (None, k) and channel in (None, c) and status in (None, s)
        ]
        if status in (None, SENT):
            sets += [
                self.keys.notification_sent_stream(k, c)
                for k, c in SENT_STREAMS
                if kind in (None, k) and channel in (None, c)
            ]
        return sets

    def _read(self, record_id: str, raw: bytes, score: bytes, due: bytes) -> Notification:
        record = decode_record(record_id, raw, created_ms_of(score))
        record.due_ms = int(due) if due else 0
        return record
