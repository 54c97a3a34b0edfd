"""notify: one notification per terminal order and enabled channel (log channel here)."""

from __future__ import annotations

import asyncio
import os
import socket
import time

from streamproc.context import StageContext
from streamproc.notifications import (
    LogChannel,
    Notification,
    decode_record,
    encode_record,
    new_id,
    new_record,
    now_iso,
)
from streamproc.transport import Decision, Message


class NotifyHandler:
    """Terminal order → notification record sent (the order's state does not change)."""

    stage = "notify"

    def __init__(self, ctx: StageContext) -> None:
        self.client = ctx.client
        self.scripts = ctx.scripts
        self.hash_key = ctx.keys.notifications
        self.lease_key = ctx.keys.notification_leases
        self.keys = ctx.keys
        self.channel = LogChannel(ctx.settings.notifications_log_path)
        self.owner = f"{socket.gethostname()}-{os.getpid()}-{id(self):x}"
        # Longer than a reclaim takes, so a live holder keeps its lease while it works.
        self.lease_ms = max(2 * ctx.settings.claim_idle_ms, 1_000)

    async def handle(self, batch: list[Message]) -> list[Decision]:
        """Lease the records, write what is not yet sent in one append, then mark it sent.

        A record leased by another live consumer is left undecided: its entry stays pending and
        is looked at again after the other consumer has marked it sent.
        """
        stale = await self._stale(batch)
        # One record per id: a re-submitted order (`ingest --force`) that ends the same way again
        # brings a second message for the same record, possibly in the same batch.
        fresh = {
            r.id: r
            for r in (
                new_record(m.order, m.state, self.channel.name)
                for m in batch
                if m.order and m.msg_id not in stale
            )
        }
        claimed = await self.scripts.run(
            "notify_claim",
            [self.hash_key, self.lease_key],
            [self.owner, int(time.time() * 1000), self.lease_ms, *fresh],
        )
        busy: set[str] = set()
        to_send: list[Notification] = []
        sent: list[Notification] = []
        for (record_id, record), verdict, raw in zip(
            fresh.items(), claimed[0::2], claimed[1::2], strict=True
        ):
            if verdict == b"busy":
                busy.add(record_id)
                continue
            current = decode_record(raw) if raw else record
            if current.status == "sent":
                continue
            if current.log_offset >= 0 and await asyncio.to_thread(
                self.channel.already_written, current.id, current.log_offset
            ):
                sent.append(current)  # written before a crash, never marked: do not repeat it
            else:
                to_send.append(current)
        if to_send:
            offset = self.channel.size()
            for record in to_send:
                record.attempts += 1
                record.log_offset = offset
            await self.client.hset(self.hash_key, mapping={r.id: encode_record(r) for r in to_send})
            await asyncio.to_thread(self.channel.send, to_send)
            sent.extend(to_send)
        if sent:
            stamp = now_iso()
            for record in sent:
                record.status, record.sent_at, record.error_message = "sent", stamp, ""
            pipe = self.client.pipeline(transaction=True)
            pipe.hset(self.hash_key, mapping={r.id: encode_record(r) for r in sent})
            pipe.hdel(self.lease_key, *(r.id for r in sent))
            await pipe.execute()
        return [
            Decision(m, "notified")
            for m in batch
            if not (m.order and new_id(m.order.order_id, m.state, self.channel.name) in busy)
        ]

    async def _stale(self, batch: list[Message]) -> set[bytes]:
        """Messages about a state the order has left (e.g. a dead_lettered order re-driven by
        `dlq retry`, then its dead-lettered notification retried too): acked, never sent."""
        pipe = self.client.pipeline(transaction=False)
        for message in batch:
            pipe.hmget(self.keys.order(message.order_id), "s", "a")
        rows = await pipe.execute()
        return {
            m.msg_id
            for m, (state, attempt) in zip(batch, rows, strict=True)
            if state is not None and (state.decode() != m.state or int(attempt or 1) != m.attempt)
        }
