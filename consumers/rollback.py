"""rollback: release the reserved stock of an order whose payment was declined."""

from __future__ import annotations

from consumers.finalize import FinalizeHandler


class RollbackHandler(FinalizeHandler):
    """reserved (declined) → rolled_back."""

    stage = "rollback"
    commit_stock = False
    outcome = "rolled_back"
