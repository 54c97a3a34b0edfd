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
        decidable = [m for m in batch if m.order]
        records = [new_record(m.order, m.state, self.channel.name) for m in decidable if m.order]
        args: list[object] = [self.owner, int(time.time() * 1000), self.lease_ms]
        for message, record in zip(decidable, records, strict=True):
            args += [record.id, message.state, message.attempt]
        claimed = await self.scripts.run(
            "notify_claim",
            [self.hash_key, self.lease_key, *(self.keys.order(m.order_id) for m in decidable)],
            args,
        )
        # One record per id: a re-submitted order (`ingest --force`) that ends the same way again
        # brings a second message for the same record, possibly in the same batch.
        fresh: dict[str, tuple[Notification, bytes]] = {}
        busy_msgs: set[bytes] = set()
        for message, record, verdict, raw in zip(
            decidable, records, claimed[0::2], claimed[1::2], strict=True
        ):
            if verdict == b"busy":
                busy_msgs.add(message.msg_id)
            elif verdict == b"ok":
                fresh[record.id] = (record, raw)
        to_send: list[Notification] = []
        sent: list[Notification] = []
        for record, raw in fresh.values():
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
        return [Decision(m, "notified") for m in batch if m.msg_id not in busy_msgs]
