"""notify: one notification per terminal order and enabled channel (log channel here)."""

from __future__ import annotations

import asyncio

from streamproc.context import StageContext
from streamproc.notifications import (
    LogChannel,
    Notification,
    decode_record,
    encode_record,
    new_record,
    now_iso,
)
from streamproc.transport import Decision, Message


class NotifyHandler:
    """Terminal order → notification record sent (the order's state does not change)."""

    stage = "notify"

    def __init__(self, ctx: StageContext) -> None:
        self.client = ctx.client
        self.hash_key = ctx.keys.notifications
        self.channel = LogChannel(ctx.settings.notifications_log_path)

    async def handle(self, batch: list[Message]) -> list[Decision]:
        """Look records up, write what is not yet sent in one append, then mark it sent."""
        # One record per id: a re-submitted order (`ingest --force`) that ends the same way again
        # brings a second message for the same record, possibly in the same batch.
        fresh = list(
            {
                r.id: r
                for r in (new_record(m.order, m.state, self.channel.name) for m in batch if m.order)
            }.values()
        )
        stored = await self.client.hmget(self.hash_key, [r.id for r in fresh])
        to_send: list[Notification] = []
        sent: list[Notification] = []
        for record, raw in zip(fresh, stored, strict=True):
            current = decode_record(raw) if isinstance(raw, bytes) else record
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
            await self.client.hset(self.hash_key, mapping={r.id: encode_record(r) for r in sent})
        return [Decision(m, "notified") for m in batch]
