"""The order as it travels: msgspec structs, encoded compactly (array-like) for streams/hashes."""

from __future__ import annotations

from collections.abc import Callable

import msgspec

# Workflow states (SPEC §3).
PENDING = "pending"
RESERVED = "reserved"
PAID = "paid"
COMPLETED = "completed"
FAILED = "failed"
ROLLED_BACK = "rolled_back"
DEAD_LETTERED = "dead_lettered"

STATES: tuple[str, ...] = (
    PENDING,
    RESERVED,
    PAID,
    COMPLETED,
    FAILED,
    ROLLED_BACK,
    DEAD_LETTERED,
)
TERMINAL_STATES: frozenset[str] = frozenset({COMPLETED, FAILED, ROLLED_BACK, DEAD_LETTERED})


class Line(msgspec.Struct, array_like=True, frozen=True):
    """One order line; money in integer minor units."""

    sku: str
    name: str
    quantity: int
    unit_price_cents: int

    @property
    def amount_cents(self) -> int:
        """quantity * unit price, exact."""
        return self.quantity * self.unit_price_cents


class Order(msgspec.Struct, array_like=True, frozen=True):
    """One order: the consecutive CSV rows sharing an order_id."""

    order_id: str
    customer_id: int
    customer_name: str
    currency: str
    order_date: str  # ISO 8601 UTC with Z
    lines: list[Line]
    email: str = ""

    @property
    def total_cents(self) -> int:
        """Sum of quantity * unit_price over the lines."""
        # A list, not a generator: read up to four times per order and stage.
        return sum([line.amount_cents for line in self.lines])

    def quantities(self) -> dict[str, int]:
        """Quantity per SKU, lines of the same SKU added up."""
        lines = self.lines
        if len(lines) == 1:  # most orders: nothing to add up
            return {lines[0].sku: lines[0].quantity}
        totals: dict[str, int] = {}
        for line in lines:
            totals[line.sku] = totals.get(line.sku, 0) + line.quantity
        return totals


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Order)


def encode_order(order: Order) -> bytes:
    """Compact JSON for streams and the order hash."""
    return _encoder.encode(order)


def order_encoder() -> Callable[[Order], bytes]:
    """encode_order without the wrapper's call, for loops that encode every order of a file."""
    return _encoder.encode


def order_decoder() -> Callable[[bytes | str], Order]:
    """decode_order without the wrapper's call, for the consumers' once-per-message decoding."""
    return _decoder.decode


def decode_order(data: bytes | str) -> Order:
    """Inverse of encode_order; raises msgspec.DecodeError / ValidationError on garbage."""
    return _decoder.decode(data)
