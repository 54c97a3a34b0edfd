"""payment: charge the order total through the gateway, idempotently per order attempt."""

from __future__ import annotations

from streamproc.context import StageContext
from streamproc.gateway import Charge, idempotency_key, payment_note
from streamproc.transport import Decision, Message


class PaymentHandler:
    """reserved → paid, or declined (then the rollback stage releases the stock)."""

    stage = "payment"

    def __init__(self, ctx: StageContext) -> None:
        self.gateway = ctx.gateway

    async def handle(self, batch: list[Message]) -> list[Decision]:
        """One gateway call per batch; many batches are in flight at once (run loop)."""
        charges = [
            Charge(
                idempotency_key(m.order_id, m.attempt),
                m.order_id,
                m.order.total_cents,
                m.order.currency,
                m.bucket,
            )
            for m in batch
            if m.order
        ]
        results = await self.gateway.charge(charges)
        # The note (field p) keeps the gateway's time as well: the order view then shows the
        # payment without reading the ledger, one round trip instead of two.
        return [
            Decision(m, "paid" if r.approved else "declined", payment_note(r, m.created_ms))
            for m, r in zip(batch, results, strict=True)
        ]
