"""rollback: release the reserved stock of an order whose payment was declined (orders an
earlier version left waiting here; the payment stage releases the stock of those it declines)."""

from __future__ import annotations

from consumers.finalize import FinalizeHandler


class RollbackHandler(FinalizeHandler):
    """reserved (declined) → rolled_back."""

    stage = "rollback"
    commit_stock = False
    outcome = "rolled_back"
