"""Notification records (one per order, type and channel) and the log channel.

Exactly once for the log channel: before writing, the record is marked pending with the log's size
at that moment; if the process dies between the write and the "sent" mark, the retry finds the line
by reading the log from that offset instead of writing it again.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from streamproc.models import COMPLETED, Order
from streamproc.money import format_cents

SUCCESS = "success"
FAILED_TYPE = "failed"


class Notification(msgspec.Struct, kw_only=True):
    """One notification record, updated by each attempt (SPEC §6)."""

    id: str
    order_reference: str
    notification_type: str
    channel: str
    customer_id: int
    order_status: str
    total_amount: str
    currency: str
    message: str
    status: str = "pending"
    attempts: int = 0
    error_message: str = ""
    sent_at: str = ""
    created_at: str = ""
    log_offset: int = -1


class LogLine(msgspec.Struct):
    """One line of the notifications log (keys in this order)."""

    ts: str
    id: str
    channel: str
    type: str
    order_reference: str
    customer_id: int
    order_status: str
    total_amount: str
    currency: str
    message: str


_encoder = msgspec.json.Encoder()
_encode = _encoder.encode
_decode = msgspec.json.Decoder(Notification).decode


def encode_record(record: Notification) -> bytes:
    """Record → JSON for the notifications hash."""
    return _encode(record)


def decode_record(data: bytes) -> Notification:
    """JSON from the notifications hash → record."""
    return _decode(data)


def now_iso() -> str:
    """Current UTC time, ISO 8601 with Z, second precision."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def notification_type(state: str) -> str:
    """success for completed orders, failed for every other terminal state."""
    return SUCCESS if state == COMPLETED else FAILED_TYPE


def new_id(order_id: str, state: str, channel: str) -> str:
    """The record id of the automatic notification: one per (order, type, channel)."""
    return f"{order_id}:{notification_type(state)}:{channel}"


def new_record(order: Order, state: str, channel: str, created_at: str = "") -> Notification:
    """The record of the automatic notification for an order that reached `state`.

    `created_at` defaults to now; a batch passes one stamp for all its records.
    """
    kind = notification_type(state)
    total = format_cents(order.total_cents)
    text = (
        f"Order {order.order_id} completed: {total} {order.currency} charged."
        if kind == SUCCESS
        else f"Order {order.order_id} could not be completed ({state.replace('_', ' ')})."
    )
    return Notification(
        id=new_id(order.order_id, state, channel),
        order_reference=order.order_id,
        notification_type=kind,
        channel=channel,
        customer_id=order.customer_id,
        order_status=state,
        total_amount=total,
        currency=order.currency,
        message=text,
        created_at=created_at or now_iso(),
    )


class LogChannel:
    """Appends one JSON line per notification to the notifications log."""

    name = "log"

    def __init__(self, path: Path) -> None:
        self.path = path

    def size(self) -> int:
        """Current size of the log (the offset the next append lands at or after)."""
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def already_written(self, record_id: str, offset: int) -> bool:
        """Whether a line for `record_id` was appended at or after `offset` (crash recovery)."""
        needle = b'"id":' + msgspec.json.encode(record_id)
        try:
            with self.path.open("rb") as handle:
                handle.seek(max(0, offset))
                return any(needle in line for line in handle)
        except FileNotFoundError:
            return False

    def send(self, records: Sequence[Notification]) -> None:
        """Append every record as one JSON line, in a single write, and flush it to the kernel."""
        if not records:
            return
        stamp = now_iso()
        lines = _encoder.encode_lines(
            [
                LogLine(
                    stamp,
                    r.id,
                    r.channel,
                    r.notification_type,
                    r.order_reference,
                    r.customer_id,
                    r.order_status,
                    r.total_amount,
                    r.currency,
                    r.message,
                )
                for r in records
            ]
        )
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        try:
            fd = os.open(self.path, flags, 0o644)
        except FileNotFoundError:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, flags, 0o644)
        try:
            os.write(fd, lines)
        finally:
            os.close(fd)
