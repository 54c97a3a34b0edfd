"""payment: charge the order total through the gateway, idempotently per order attempt, then
settle the order's reservation: completed, or rolled back when the charge is declined."""

from __future__ import annotations

from consumers.settlement import settle
from streamproc.context import StageContext
from streamproc.gateway import Charge, idempotency_key, payment_note
from streamproc.transport import Decision, Message


def charges_of(batch: list[Message]) -> list[Charge]:
    """One gateway charge per message: its attempt's idempotency key, the order's total."""
    return [
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


class PaymentHandler:
    """reserved → completed (charged, stock committed) or rolled_back (declined, stock released).

    Settling here rather than in the finalize and rollback stages saves each order a stream hop
    and an atomic step, and never leaves a charged order waiting for another stage. A replay is
    safe at every point: the gateway returns a key's first result, and a reservation settled by
    an earlier delivery is reported settled again."""

    stage = "payment"

    def __init__(self, ctx: StageContext) -> None:
        self.gateway = ctx.gateway
        self.stock = ctx.stock

    async def handle(self, batch: list[Message]) -> list[Decision]:
        """One gateway call per batch (many batches are in flight at once, see the run loop),
        then one settlement call for the approved orders and one for the declined ones."""
        results = await self.gateway.charge(charges_of(batch))
        approved = [m for m, r in zip(batch, results, strict=True) if r.approved]
        declined = [m for m, r in zip(batch, results, strict=True) if not r.approved]
        settled = iter(await settle(self.stock, approved, True))
        released = iter(await settle(self.stock, declined, False))
        decisions: list[Decision] = []
        for m, r in zip(batch, results, strict=True):
            problem = next(settled if r.approved else released)
            if problem:
                decisions.append(Decision.failure(m, problem, True))
            else:
                # The note (field p) keeps the gateway's time as well: the order view then shows
                # the payment without reading the ledger, one round trip instead of two.
                outcome = "completed" if r.approved else "rolled_back"
                decisions.append(Decision(m, outcome, payment_note(r, m.created_ms)))
        return decisions
