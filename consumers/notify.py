"""notify: one notification per terminal order, enabled type and enabled channel (SPEC §6).

Stream entries make each record's first attempt and create the record with its outcome;
`run_due` (driven by a schedule loop beside the stage loop) makes every later one: retries after a
failed send, resends asked for through the API, and retries whose consumer died. A first attempt
whose consumer died is made again by the entry's redelivery (verdict "recover"). A send never
waits for a retry.
"""

from __future__ import annotations

import asyncio
import os
import socket
from dataclasses import dataclass

from streamproc.clock import now_ms
from streamproc.context import StageContext
from streamproc.faults import die_now, fault_point
from streamproc.mail import EmailChannel, SendResult, SmtpConfig, compose
from streamproc.models import Order, decode_order
from streamproc.notification_store import ClaimRequest, NotificationStore, Settlement
from streamproc.notifications import (
    EMAIL,
    FAILED,
    LOG,
    SENT,
    LogChannel,
    Notification,
    new_record,
    notification_type,
    split_id,
)
from streamproc.preferences import Preferences, default_preferences, load_preferences
from streamproc.transport import Decision, Message

DAY_MS = 86_400_000


@dataclass(slots=True)
class Attempt:
    """One record to send now. `first`: its first attempt (the record does not exist yet, and is
    created by the settlement; already counted); else an existing record, resumed.
    `written_from`: the log offset to look for its line from first (a log record whose earlier
    attempt died: written, maybe), or -1."""

    record: Notification
    order: Order | None
    recipient: str
    first: bool
    written_from: int = -1
    msg_id: bytes = b""


class NotifyHandler:
    """Terminal order → its notification records, sent (the order's state does not change)."""

    stage = "notify"

    def __init__(self, ctx: StageContext) -> None:
        settings = ctx.settings
        self.client = ctx.client
        self.keys = ctx.keys
        self.namespace = settings.namespace
        self.store = NotificationStore(ctx.client, ctx.scripts, ctx.keys, ctx.metrics)
        self.log = LogChannel(settings.notifications_log_path)
        smtp = SmtpConfig.from_url(settings.smtp_url) if settings.smtp_url else None
        self.email = EmailChannel(smtp, settings.smtp_from)
        self.sender = settings.smtp_from
        self.defaults = default_preferences(settings)
        self.max_attempts = settings.notification_max_attempts
        self.retry_base_ms = settings.notification_retry_base_ms
        self.retry_max_ms = settings.notification_retry_max_ms
        self.retention_days = settings.notification_retention_days
        self.owner = f"{socket.gethostname()}-{os.getpid()}-{id(self):x}"
        # Longer than a reclaim takes, so a live holder keeps its lease while it works.
        self.lease_ms = max(2 * settings.claim_idle_ms, 1_000)
        self._die_after_send = fault_point(self.stage) == "after_send"

    async def handle(self, batch: list[Message]) -> list[Decision]:
        """Create each message's records (per the customer's preferences) and send them.

        A record another consumer is attempting leaves its message undecided: the entry stays
        pending and is looked at again once that attempt has settled or its lease ran out. So does
        a first attempt whose record this consumer could not create (its lease ran out and another
        consumer took it): the entry is what brings that record back if the other one dies too.
        """
        orders = [m for m in batch if m.order is not None]
        stored = await load_preferences(
            self.client, self.keys, (m.order.customer_id for m in orders if m.order)
        )
        offset = self.log.size()  # read before the claim: an earlier offset is always safe
        requests: list[ClaimRequest] = []
        wanted: list[tuple[Message, Notification, Order]] = []
        for message in orders:
            order = message.order
            assert order is not None
            preferences = stored.get(order.customer_id, self.defaults)
            for channel in preferences.channels_for(notification_type(message.state)):
                record = new_record(order, message.state, channel, self.max_attempts)
                record.attempts = 1  # the attempt about to be made
                record.log_offset = offset if channel == LOG else -1
                requests.append(
                    ClaimRequest(
                        record.id,
                        message.order_id,
                        message.state,
                        message.attempt,
                        record.log_offset,
                        record.customer_id,
                    )
                )
                wanted.append((message, record, order))
        now = now_ms()
        claims = await self.store.claim(self.owner, now, self.lease_ms, requests)
        busy: set[bytes] = set()
        attempts: list[Attempt] = []
        for (message, record, order), claim in zip(wanted, claims, strict=True):
            if claim.verdict == "busy":
                busy.add(message.msg_id)
                continue
            recipient = _recipient(stored.get(order.customer_id), order)
            if claim.verdict == "resume" and claim.stored is not None:
                attempts.append(Attempt(claim.stored, order, recipient, first=False))
            elif claim.verdict in ("new", "recover"):
                record.created_ms = now
                attempt = Attempt(record, order, recipient, first=True, msg_id=message.msg_id)
                if claim.verdict == "recover":
                    # The attempt that died is counted; this one too, unless its line is found.
                    record.attempts = claim.dead_attempts + 1
                    if record.channel == LOG:
                        attempt.written_from = claim.dead_offset
                attempts.append(attempt)
        busy |= await self._attempt(attempts)
        return [Decision(m, "notified") for m in batch if m.msg_id not in busy]

    async def run_due(self, limit: int) -> int:
        """Attempt up to `limit` pending records that are due; how many were due."""
        now = now_ms()
        ids = await self.store.due(now, limit)
        if not ids:
            return 0
        claims = await self.store.claim(
            self.owner, now, self.lease_ms, [ClaimRequest(rid, split_id(rid)[0]) for rid in ids]
        )
        records = [c.stored for c in claims if c.verdict == "resume" and c.stored is not None]
        mail = [r for r in records if r.channel == EMAIL]
        orders = await self._orders({r.order_reference for r in mail})
        stored = await load_preferences(self.client, self.keys, {r.customer_id for r in mail})
        attempts = []
        for record in records:
            order = orders.get(record.order_reference)
            recipient = _recipient(stored.get(record.customer_id), order)
            attempts.append(Attempt(record, order, recipient, first=False))
        await self._attempt(attempts)
        return len(ids)

    async def housekeeping(self) -> int:
        """Drop records older than the retention period; how many were dropped."""
        if not self.retention_days:
            return 0
        return await self.store.expire(now_ms() - self.retention_days * DAY_MS)

    async def _attempt(self, attempts: list[Attempt]) -> set[bytes]:
        """Send each record once more, then record the outcomes in one step. Returns the stream
        entries of first attempts whose record this consumer could not create."""
        if not attempts:
            return set()
        found: list[Attempt] = []  # written to the log before a crash, never marked sent
        begin: list[Attempt] = []
        fresh: list[Attempt] = []  # first attempts, no line to look for
        for attempt in attempts:
            record = attempt.record
            written_from = attempt.written_from if attempt.first else record.log_offset
            if (
                record.channel == LOG
                and written_from >= 0
                and await asyncio.to_thread(self.log.already_written, record.id, written_from)
            ):
                if attempt.first:
                    record.attempts -= 1  # the line is the dead attempt's: this one sends nothing
                found.append(attempt)
            elif attempt.first:
                fresh.append(attempt)
            else:
                begin.append(attempt)
        if begin:
            # Counted and (log) given the offset before the send, so a crash during it is
            # recovered like a first send's.
            offset = self.log.size()
            for attempt in begin:
                attempt.record.attempts += 1
                attempt.record.log_offset = offset if attempt.record.channel == LOG else -1
            applied = await self.store.settle(
                self.owner, [Settlement("begin", a.record) for a in begin]
            )
            begin = [a for a, ok in zip(begin, applied, strict=True) if ok]
        sending = fresh + begin
        now = now_ms()
        results = await self._send(sending, now)
        if self._die_after_send and sending:
            die_now()  # test hook: sent, not yet recorded
        settled = found + sending
        settlements = [Settlement("sent", _mark_sent(a.record, now), first=a.first) for a in found]
        settlements += [
            self._outcome(a, result, now) for a, result in zip(sending, results, strict=True)
        ]
        applied = await self.store.settle(self.owner, settlements)
        return {a.msg_id for a, ok in zip(settled, applied, strict=True) if a.first and not ok}

    async def _send(self, attempts: list[Attempt], now: int) -> list[SendResult]:
        """Send through each channel at once; one result per attempt, in order."""
        logs = [a.record for a in attempts if a.record.channel == LOG]
        mails = [a for a in attempts if a.record.channel == EMAIL]
        log_results, mail_results = await asyncio.gather(
            self._send_log(logs, now), self._send_mail(mails)
        )
        by_id = dict(zip((r.id for r in logs), log_results, strict=True))
        by_id.update(zip((a.record.id for a in mails), mail_results, strict=True))
        return [by_id[a.record.id] for a in attempts]

    async def _send_log(self, records: list[Notification], now: int) -> list[SendResult]:
        if not records:
            return []
        try:
            await asyncio.to_thread(self.log.send, records, now)
        except OSError as exc:
            return [SendResult(f"log write failed: {exc.strerror or exc}")] * len(records)
        return [SendResult()] * len(records)

    async def _send_mail(self, attempts: list[Attempt]) -> list[SendResult]:
        results: dict[int, SendResult] = {}
        emails = []
        positions = []
        for index, attempt in enumerate(attempts):
            if attempt.order is None:
                results[index] = SendResult("order not found", permanent=True)
            elif not attempt.recipient:
                customer = attempt.record.customer_id
                results[index] = SendResult(f"no email address for customer {customer}", True)
            else:
                emails.append(
                    compose(
                        attempt.record,
                        attempt.recipient,
                        attempt.order.customer_name,
                        self.sender,
                        self.namespace,
                    )
                )
                positions.append(index)
        for index, result in zip(positions, await self.email.send(emails), strict=True):
            results[index] = result
        return [results[i] for i in range(len(attempts))]

    def _outcome(self, attempt: Attempt, result: SendResult, now: int) -> Settlement:
        """Sent; pending again with a retry due after a growing delay; or failed for good."""
        record, first = attempt.record, attempt.first
        if result.ok:
            return Settlement("sent", _mark_sent(record, now), first=first)
        record.error_message = result.error
        if not result.permanent and record.attempts < record.max_attempts:
            delay_ms = min(self.retry_max_ms, self.retry_base_ms * 2 ** (record.attempts - 1))
            return Settlement("retry", record, now + delay_ms, first=first)
        record.status, record.log_offset = FAILED, -1
        return Settlement("failed", record, first=first)

    async def _orders(self, order_ids: set[str]) -> dict[str, Order]:
        """The stored orders (payloads) of these ids, one pipelined round trip."""
        ids = sorted(order_ids)
        if not ids:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for order_id in ids:
            pipe.hget(self.keys.order(order_id), "d")
        payloads = await pipe.execute()
        return {oid: decode_order(raw) for oid, raw in zip(ids, payloads, strict=True) if raw}


def _mark_sent(record: Notification, now: int) -> Notification:
    record.status, record.sent_ms, record.error_message, record.log_offset = SENT, now, "", -1
    return record


def _recipient(preferences: Preferences | None, order: Order | None) -> str:
    """The customer's own choice of address first, then the one on the order."""
    if preferences is not None and preferences.email:
        return preferences.email
    return order.email if order is not None else ""
