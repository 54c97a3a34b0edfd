"""finalize: commit the reserved stock and mark the order completed (orders an earlier version
left paid; the payment stage settles the orders it charges itself)."""

from __future__ import annotations

from consumers.settlement import settle
from streamproc.context import StageContext
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
        problems = await settle(self.stock, batch, self.commit_stock)
        return [
            Decision.failure(message, problem, True) if problem else Decision(message, self.outcome)
            for message, problem in zip(batch, problems, strict=True)
        ]
