"""Notifications: `GET /api/notifications` (filtered, paged), `/order/{order_id}`, `/stats`,
`/recent`, and `POST /api/notifications/{id}/resend`.

Records, indexes and counters are described in streamproc.notification_store: a page merges the
time-ordered index sets matching the filters from the cursor on, and the stats are the sizes of
those sets, so no request reads all records.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal

import msgspec

from api.endpoints import Call
from api.errors import Conflict, NotFound
from api.responses import money
from api.types import CustomerId, Day, Limit, OrderId, Timestamp, timestamp
from streamproc.clock import now_ms
from streamproc.notification_store import NotificationStore, PageQuery
from streamproc.notifications import CHANNELS, FAILED, PENDING, SENT, Notification

NotificationType = Literal["success", "failed"]
ChannelName = Literal["log", "email"]
StatusName = Literal["pending", "sent", "failed"]
Cursor = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[0-9]{1,17}$",
        description="the next_cursor of the previous page",
        examples=["1762769723000000"],
    ),
]
NotificationId = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[A-Za-z0-9._-]{1,64}:(success|failed):(log|email)$",
        description="a notification id: <order id>:<success|failed>:<log|email>",
        examples=["1001:success:log"],
    ),
]


class NotificationQuery(msgspec.Struct):
    """Filters (all optional, combined with AND), page size and the previous page's cursor."""

    type: NotificationType | None = None
    channel: ChannelName | None = None
    status: StatusName | None = None
    customer_id: CustomerId | None = None
    from_date: Day | None = None
    to_date: Day | None = None
    limit: Limit = 50
    cursor: Cursor | None = None

    def check(self) -> dict[str, list[str]]:
        """The date range runs forwards."""
        if self.from_date and self.to_date and self.to_date < self.from_date:
            return {"to_date": ["must be on or after from_date"]}
        return {}


class RecentQuery(msgspec.Struct):
    """How many of the newest notifications."""

    limit: Limit = 10


class OrderPath(msgspec.Struct):
    """An order id in the path."""

    order_id: OrderId


class NotificationPath(msgspec.Struct):
    """A notification id in the path."""

    id: NotificationId


class NotificationView(msgspec.Struct):
    """One notification record: one per order, type and channel, updated by each attempt."""

    id: str
    order_reference: str
    notification_type: str
    channel: str
    customer_id: int
    order_status: str
    total_amount: float
    currency: str
    message: str
    status: str
    attempts: int
    error_message: str | None
    sent_at: Timestamp | None
    created_at: Timestamp | None
    next_attempt_at: Timestamp | None


class NotificationPage(msgspec.Struct):
    """Records newest first; pass next_cursor as ?cursor= for the next page (null: last page)."""

    items: list[NotificationView]
    next_cursor: str | None
    total: int


class NotificationStats(msgspec.Struct):
    """Counts over every record: by type, by status (failed_sends = status failed), by channel,
    and created today (UTC)."""

    total: int
    success: int
    failed: int
    sent: int
    pending: int
    failed_sends: int
    by_channel: dict[str, int]
    today: int


def view(record: Notification) -> NotificationView:
    """The API's view of a record."""
    return NotificationView(
        id=record.id,
        order_reference=record.order_reference,
        notification_type=record.notification_type,
        channel=record.channel,
        customer_id=record.customer_id,
        order_status=record.order_status,
        total_amount=money(record.total_cents),
        currency=record.currency,
        message=record.message,
        status=record.status,
        attempts=record.attempts,
        error_message=record.error_message or None,
        sent_at=timestamp(record.sent_ms),
        created_at=timestamp(record.created_ms),
        next_attempt_at=timestamp(record.due_ms) if record.status == PENDING else None,
    )


def _store(call: Call[Any, Any, Any]) -> NotificationStore:
    services = call.services
    return NotificationStore(services.redis, services.scripts, services.keys)


def _day_ms(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)


async def list_notifications(call: Call[None, NotificationQuery, None]) -> NotificationPage:
    """Notifications newest first, filtered by type, channel, status, customer and dates."""
    q = call.query
    page = await _store(call).page(
        PageQuery(
            kind=q.type,
            channel=q.channel,
            status=q.status,
            customer_id=q.customer_id,
            from_ms=_day_ms(q.from_date) if q.from_date else None,
            until_ms=_day_ms(q.to_date + timedelta(days=1)) if q.to_date else None,
            limit=q.limit,
            cursor=int(q.cursor) if q.cursor else None,
        )
    )
    return NotificationPage([view(r) for r in page.items], page.next_cursor, page.total)


async def recent_notifications(call: Call[None, RecentQuery, None]) -> list[NotificationView]:
    """The newest notifications."""
    page = await _store(call).page(PageQuery(limit=call.query.limit))
    return [view(r) for r in page.items]


async def order_notifications(call: Call[OrderPath, None, None]) -> list[NotificationView]:
    """Every notification of one order (at most one per type and channel), newest first."""
    order_id = call.path.order_id
    ids = [f"{order_id}:{kind}:{channel}" for kind in ("success", "failed") for channel in CHANNELS]
    records = [r for r in await _store(call).get(ids) if r is not None]
    if not records and not await call.services.redis.exists(call.services.keys.order(order_id)):
        raise NotFound(f"Order {order_id} not found.")
    records.sort(key=lambda r: (r.created_ms, r.id), reverse=True)
    return [view(r) for r in records]


async def notification_stats(call: Call[None, None, None]) -> NotificationStats:
    """Totals by type, status and channel, and today's count: index sizes, O(1) each."""
    today = datetime.now(UTC).date()
    stats = await _store(call).stats(_day_ms(today))
    return NotificationStats(
        total=stats.total(),
        success=stats.total(kind="success"),
        failed=stats.total(kind="failed"),
        sent=stats.total(status=SENT),
        pending=stats.total(status=PENDING),
        failed_sends=stats.total(status=FAILED),
        by_channel={channel: stats.total(channel=channel) for channel in CHANNELS},
        today=stats.since,
    )


async def resend_notification(call: Call[NotificationPath, None, None]) -> NotificationView:
    """Give a failed notification one more attempt, made by a notify consumer right away."""
    record_id = call.path.id
    outcome, record = await _store(call).resend(record_id, now_ms())
    if outcome == "ok" and record is not None:
        return view(record)
    if outcome == "missing":
        raise NotFound(f"Notification {record_id} not found.")
    if outcome == SENT:
        raise Conflict(f"Notification {record_id} was sent already; only failed ones are resent.")
    if outcome == PENDING:
        raise Conflict(
            f"Notification {record_id} is pending (an attempt is due or under way); "
            "only failed ones are resent."
        )
    raise Conflict(f"Notification {record_id} changed while being resent; try again.")
