"""finalize: commit the reserved stock and mark the order completed."""

from __future__ import annotations

from streamproc.context import StageContext
from streamproc.stock import StockRequest
from streamproc.transport import Decision, Message


class FinalizeHandler:
    """paid → completed."""

    stage = "finalize"
    commit_stock = True
    outcome = "completed"

    def __init__(self, ctx: StageContext) -> None:
        self.stock = ctx.stock

    async def handle(self, batch: list[Message]) -> list[Decision]:
        """Settle every reservation of the batch in one script call."""
        requests = [
            StockRequest(m.reservation_key, m.order.quantities(), m.bucket)
            for m in batch
            if m.order
        ]
        states = await self.stock.settle(requests, commit=self.commit_stock)
        expected = "c" if self.commit_stock else "x"
        return [
            Decision(message, self.outcome)
            if state == expected
            else Decision.failure(
                message, f"reservation is {state or 'missing'!r}, cannot {self.stage}", True
            )
            for message, state in zip(batch, states, strict=True)
        ]
