"""`GET /api/orders/{order_id}`: one order's state, lines, payment and timeline."""

from __future__ import annotations

from typing import Literal

import msgspec

from api.endpoints import Call
from api.errors import NotFound
from api.responses import money
from api.types import OrderId, Timestamp, timestamp
from streamproc.gateway import idempotency_key
from streamproc.orderview import StoredOrder, load_order

# Which stage moved an order into each state (dead_lettered: whichever stage gave up; completed
# and rolled_back: the payment stage, or finalize and rollback for orders an earlier version left
# paid or declined).
STAGE_OF_STATE = {
    "pending": "ingest",
    "reserved": "reserve",
    "failed": "reserve",
    "paid": "payment",
}
# The stage an order waits for in each state; a declined payment of an earlier version recorded
# `reserved` a second time and left the order to the rollback stage.
AWAITED_STAGE = {"pending": "reserve", "reserved": "payment", "paid": "finalize"}


def timeline_stages(states: list[str]) -> list[str | None]:
    """The stage behind each step: a repeated `reserved` is payment's decline (earlier versions),
    `dead_lettered` is the stage that gave up (the one the order was waiting for), and a
    completion or rollback is the payment stage's unless an earlier version's finalize or
    rollback stage made it."""
    stages: list[str | None] = []
    prev = ""
    for state in states:
        declined = prev == "reserved" and stages[-1:] == ["payment"]
        if state == "reserved" and prev == "reserved":
            stages.append("payment")  # declined: the order waits for rollback now
        elif state in ("dead_lettered", "rolled_back"):
            stages.append("rollback" if declined else AWAITED_STAGE.get(prev))
        elif state == "completed":
            stages.append(AWAITED_STAGE.get(prev))
        else:
            stages.append(STAGE_OF_STATE.get(state))
        prev = state
    return stages


class OrderPath(msgspec.Struct):
    """Path of /api/orders/{order_id}."""

    order_id: OrderId


class LineView(msgspec.Struct):
    """One order line."""

    product_sku: str
    product_name: str
    quantity: int
    unit_price: float
    amount: float


class PaymentView(msgspec.Struct):
    """What the gateway recorded for the order's current attempt."""

    status: Literal["charged", "declined", "not_attempted"]
    idempotency_key: str
    amount: float | None
    currency: str | None
    recorded_at: Timestamp | None
    successful_charges: int


class TimelineEvent(msgspec.Struct):
    """The order entered `state` at `at`, by `stage`."""

    state: str
    stage: str | None
    at: Timestamp


class OrderView(msgspec.Struct):
    """One order as stored."""

    order_id: str
    status: str
    attempt: int
    next_stage: str | None
    customer_id: int
    customer_name: str
    customer_email: str | None
    currency: str
    order_date: str
    total_amount: float
    item_count: int
    lines: list[LineView]
    payment: PaymentView
    error_message: str | None
    created_at: Timestamp | None
    updated_at: Timestamp | None
    timeline: list[TimelineEvent]


def order_view(stored: StoredOrder) -> OrderView:
    """The API's view of a stored order."""
    order, pay = stored.order, stored.payment
    status: Literal["charged", "declined", "not_attempted"] = (
        "charged" if pay.outcome == "ok" else "declined" if pay.outcome else "not_attempted"
    )
    return OrderView(
        order_id=order.order_id,
        status=stored.state,
        attempt=stored.attempt,
        next_stage=stored.next_stage or None,
        customer_id=order.customer_id,
        customer_name=order.customer_name,
        customer_email=order.email or None,
        currency=order.currency,
        order_date=order.order_date,
        total_amount=money(order.total_cents),
        item_count=sum(line.quantity for line in order.lines),
        lines=[
            LineView(
                ln.sku, ln.name, ln.quantity, money(ln.unit_price_cents), money(ln.amount_cents)
            )
            for ln in order.lines
        ],
        payment=PaymentView(
            status=status,
            idempotency_key=idempotency_key(order.order_id, stored.attempt),
            amount=money(pay.amount_cents) if pay.outcome else None,
            currency=pay.currency or None,
            recorded_at=timestamp(pay.recorded_ms),
            successful_charges=pay.charges,
        ),
        error_message=stored.error or None,
        created_at=timestamp(stored.created_ms),
        updated_at=timestamp(stored.updated_ms),
        timeline=[
            TimelineEvent(step.state, stage, timestamp(step.at_ms) or "")
            for step, stage in zip(
                stored.timeline, timeline_stages([s.state for s in stored.timeline]), strict=True
            )
        ],
    )


async def get_order(call: Call[OrderPath, None, None]) -> OrderView:
    """State, lines, total, payment outcome and the timeline of stage events."""
    stored = await load_order(call.services.redis, call.services.keys, call.path.order_id)
    if stored is None:
        raise NotFound(f"Order {call.path.order_id} not found.")
    return order_view(stored)
