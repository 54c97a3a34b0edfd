"""Notification records (one per order, type and channel), their compact encoding, and the log
channel.

A record is one short text value in the notifications hash (or, once sent at its first attempt, in
its sent stream's entry: streamproc/notification_store.py), keyed by its id
`<order>:<type>:<channel>`: `status|customer|order status|total cents|currency|attempts|
max attempts|sent ms|log offset|error`, with one-letter codes for the two statuses and the error
last (it may hold any character). The order id, type and channel are in the id; the message is
derived text; the creation time is the record's score in its indexes. About 40 bytes instead of the
~520 of a JSON record, and the scripts read the status and customer without a decoder.

Exactly once for the log channel: before writing, the record (for a first attempt, whose record is
only created once it is over: its lease) holds the log's size at that moment; if the process dies
between the write and the "sent" mark, the next attempt finds the line by reading the log from that
offset instead of writing it again.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import msgspec

from streamproc.clock import iso_ms
from streamproc.models import COMPLETED, Order
from streamproc.money import format_cents

SUCCESS = "success"
FAILED_TYPE = "failed"
TYPES: tuple[str, ...] = (SUCCESS, FAILED_TYPE)
LOG = "log"
EMAIL = "email"
CHANNELS: tuple[str, ...] = (LOG, EMAIL)
PENDING = "pending"
SENT = "sent"
FAILED = "failed"
STATUSES: tuple[str, ...] = (PENDING, SENT, FAILED)

# One-letter codes in the stored text; the Lua helpers (lua/lib/notification.lua) use the same.
STATUS_CODES = {PENDING: "p", SENT: "s", FAILED: "f"}
_STATUS_OF_CODE = {code: status for status, code in STATUS_CODES.items()}
ORDER_STATUS_CODES = {"completed": "c", "failed": "f", "rolled_back": "r", "dead_lettered": "d"}
_ORDER_STATUS_OF_CODE = {code: state for state, code in ORDER_STATUS_CODES.items()}
FIELDS = 10
# Scores are creation ms x this plus a tie-breaker, so they are unique and still say the time.
SCORE_PER_MS = 1000


class Notification(msgspec.Struct, kw_only=True):
    """One notification record, updated by each attempt (SPEC §6); money in cents, times in ms."""

    id: str
    order_reference: str
    notification_type: str
    channel: str
    customer_id: int
    order_status: str
    total_cents: int
    currency: str
    status: str = PENDING
    attempts: int = 0
    max_attempts: int = 1
    sent_ms: int = 0
    log_offset: int = -1
    error_message: str = ""
    # Not stored in the record: its index score says when it was created, and the schedule when
    # a pending record is due next. Filled in by the readers that look them up.
    created_ms: int = 0
    due_ms: int = 0

    @property
    def total_amount(self) -> str:
        """The order total as a 2-decimal string."""
        return format_cents(self.total_cents)

    @property
    def message(self) -> str:
        """The notification text (derived, so never stored)."""
        if self.notification_type == SUCCESS:
            return (
                f"Order {self.order_reference} completed: "
                f"{self.total_amount} {self.currency} charged."
            )
        state = self.order_status.replace("_", " ")
        return f"Order {self.order_reference} could not be completed ({state})."

    @property
    def sent_at(self) -> str:
        """When it was sent, ISO 8601 UTC with Z ("" when not sent)."""
        return iso_ms(self.sent_ms) if self.sent_ms else ""


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


def encode_record(record: Notification) -> bytes:
    """Record → the compact text stored in the notifications hash."""
    return (
        f"{STATUS_CODES[record.status]}|{record.customer_id}|"
        f"{ORDER_STATUS_CODES[record.order_status]}|{record.total_cents}|{record.currency}|"
        f"{record.attempts}|{record.max_attempts}|{record.sent_ms}|{record.log_offset}|"
        f"{record.error_message}"
    ).encode()


def decode_record(record_id: str, data: bytes, created_ms: int = 0) -> Notification:
    """The stored text of record `record_id` → record; ValueError when it is not one."""
    parts = data.decode().split("|", FIELDS - 1)
    if len(parts) != FIELDS:
        raise ValueError(f"notification record {record_id!r} has {len(parts)} fields")
    order_id, kind, channel = split_id(record_id)
    status, customer, state, total, currency, attempts, limit, sent, offset, error = parts
    try:
        return Notification(
            id=record_id,
            order_reference=order_id,
            notification_type=kind,
            channel=channel,
            customer_id=int(customer),
            order_status=_ORDER_STATUS_OF_CODE[state],
            total_cents=int(total),
            currency=currency,
            status=_STATUS_OF_CODE[status],
            attempts=int(attempts),
            max_attempts=int(limit),
            sent_ms=int(sent),
            log_offset=int(offset),
            error_message=error,
            created_ms=created_ms,
        )
    except KeyError as exc:
        raise ValueError(f"notification record {record_id!r}: unknown code {exc}") from None


def split_id(record_id: str) -> tuple[str, str, str]:
    """`<order>:<type>:<channel>` → (order id, type, channel); ValueError when malformed."""
    order_id, kind, channel = record_id.rsplit(":", 2)
    if kind not in TYPES or channel not in CHANNELS or not order_id:
        raise ValueError(f"not a notification id: {record_id!r}")
    return order_id, kind, channel


def created_ms_of(score: float | int | str | bytes) -> int:
    """A record's creation time (ms) from its index score."""
    return int(float(score)) // SCORE_PER_MS


def notification_type(state: str) -> str:
    """success for completed orders, failed for every other terminal state."""
    return SUCCESS if state == COMPLETED else FAILED_TYPE


def new_id(order_id: str, state: str, channel: str) -> str:
    """The record id of the automatic notification: one per (order, type, channel)."""
    return f"{order_id}:{notification_type(state)}:{channel}"


def new_record(order: Order, state: str, channel: str, max_attempts: int = 1) -> Notification:
    """The record of the automatic notification for an order that reached `state`."""
    return Notification(
        id=new_id(order.order_id, state, channel),
        order_reference=order.order_id,
        notification_type=notification_type(state),
        channel=channel,
        customer_id=order.customer_id,
        order_status=state,
        total_cents=order.total_cents,
        currency=order.currency,
        max_attempts=max_attempts,
    )


class LogChannel:
    """Appends one JSON line per notification to the notifications log."""

    name = LOG

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

    def send(self, records: Sequence[Notification], now_ms: int) -> None:
        """Append every record as one JSON line, in a single write, and flush it to the kernel."""
        if not records:
            return
        stamp = iso_ms(now_ms)[:-5] + "Z"  # whole seconds, as the log always had
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
