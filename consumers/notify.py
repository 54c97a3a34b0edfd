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
        self.order_prefix = ctx.keys.order("")
        self.channel = LogChannel(ctx.settings.notifications_log_path)
        self.owner = f"{socket.gethostname()}-{os.getpid()}-{id(self):x}"
        # Longer than a reclaim takes, so a live holder keeps its lease while it works.
        self.lease_ms = max(2 * ctx.settings.claim_idle_ms, 1_000)

    async def handle(self, batch: list[Message]) -> list[Decision]:
        """Lease the records, write what is not yet sent in one append, then mark it sent.

        A record that does not exist yet is stored as pending (with the log's size from before
        the lease) by the lease script itself; only a record left by an earlier attempt needs a
        separate pending write. A record leased by another live consumer is left undecided: its
        entry stays pending and is looked at again after the other consumer has marked it sent.
        """
        fresh, busy_msgs = await self._claim([m for m in batch if m.order])
        marked: list[Notification] = []  # stored as pending by the lease script
        to_send: list[Notification] = []  # left by an earlier attempt: mark pending again
        sent: list[Notification] = []
        for record, raw in fresh.values():
            if not raw:
                marked.append(record)
                continue
            current = decode_record(raw)
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
        if marked or to_send:
            await asyncio.to_thread(self.channel.send, [*marked, *to_send])
            sent += marked
            sent += to_send
        await self._mark_sent(sent)
        return [Decision(m, "notified") for m in batch if m.msg_id not in busy_msgs]

    async def _claim(
        self, decidable: list[Message]
    ) -> tuple[dict[str, tuple[Notification, bytes]], set[bytes]]:
        """Lease each message's record: ({record id: (record, stored record or b"")}, the ids of
        the messages whose record another consumer holds)."""
        stamp = now_iso()
        offset = self.channel.size()
        records = [
            new_record(m.order, m.state, self.channel.name, stamp) for m in decidable if m.order
        ]
        args: list[object] = [self.owner, int(time.time() * 1000), self.lease_ms]
        for message, record in zip(decidable, records, strict=True):
            # What the record looks like once marked pending for its first send.
            record.attempts, record.log_offset = 1, offset
            args += [record.id, message.state, message.attempt, encode_record(record)]
        claimed = await self.scripts.run(
            "notify_claim",
            [self.hash_key, self.lease_key, *[self.order_prefix + m.order_id for m in decidable]],
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
        return fresh, busy_msgs

    async def _mark_sent(self, sent: list[Notification]) -> None:
        """Mark the records sent and give their leases back, in one transaction."""
        if not sent:
            return
        stamp = now_iso()
        for record in sent:
            record.status, record.sent_at, record.error_message = "sent", stamp, ""
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.hash_key, mapping={r.id: encode_record(r) for r in sent})
        pipe.hdel(self.lease_key, *(r.id for r in sent))
        await pipe.execute()
