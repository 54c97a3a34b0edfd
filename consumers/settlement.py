"""Settling reservations: commit a paid order's stock, or release a declined one's."""

from __future__ import annotations

from collections.abc import Sequence

from streamproc.stock import StockLedger, StockRequest
from streamproc.transport import Message


async def settle(stock: StockLedger, batch: Sequence[Message], commit: bool) -> list[str]:
    """Commit (or release) each message's reservation in one script call: per message "" once
    it is settled as asked (now or by an earlier delivery), else why it cannot be, a permanent
    failure (the reservation is missing, or was settled the other way)."""
    if not batch:
        return []
    requests = [
        StockRequest(m.reservation_key, m.order.quantities(), m.bucket) for m in batch if m.order
    ]
    states = await stock.settle(requests, commit=commit)
    expected, verb = ("c", "commit") if commit else ("x", "release")
    return [
        "" if state == expected else f"reservation is {state or 'missing'!r}, cannot {verb} it"
        for state in states
    ]
