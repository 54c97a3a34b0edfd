"""reserve: take every line of an order from stock, or none of them."""

from __future__ import annotations

from streamproc.context import StageContext
from streamproc.stock import StockRequest
from streamproc.transport import Decision, Message


class ReserveHandler:
    """pending → reserved (all lines reserved) or failed (out of stock / unknown SKU)."""

    stage = "reserve"

    def __init__(self, ctx: StageContext) -> None:
        self.stock = ctx.stock

    async def handle(self, batch: list[Message]) -> list[Decision]:
        """One stock script call for the whole batch."""
        requests = [
            StockRequest(m.reservation_key, m.order.quantities(), m.bucket)
            for m in batch
            if m.order
        ]
        results = await self.stock.reserve(requests)
        return [
            Decision(m, "reserved") if r == "r" else Decision(m, "failed", r.removeprefix("f:"))
            for m, r in zip(batch, results, strict=True)
        ]
