"""Leaderboards and customer standings: `GET /api/leaderboard/customers|products`,
`GET /api/leaderboard/customers/{id}/rank`, `GET /api/customers/{id}` and
`POST /api/leaderboard/rebuild`.

The boards are sorted sets kept live by the finalize stage as orders complete
(streamproc.analytics.leaderboard), one set of boards per currency.
"""

from __future__ import annotations

import msgspec

from api.endpoints import Call
from api.errors import Conflict, NotFound
from api.handlers.kpis import CurrencyQuery, currency_of
from api.responses import money
from api.types import Currency, CustomerId, Limit, Timestamp
from streamproc.analytics.leaderboard import (
    CustomerStanding,
    customer_standing,
    top_customers,
    top_products,
)
from streamproc.analytics.rebuild import RebuildBusy, RebuildLost, RebuildReport, rebuild


class BoardQuery(msgspec.Struct):
    """Query of a leaderboard: how many rows and which currency's board."""

    limit: Limit = 10
    currency: Currency | None = None


class CustomerPath(msgspec.Struct):
    """A customer id in the path."""

    id: CustomerId


class CustomerRow(msgspec.Struct):
    """One customer on the board, by total spent on completed orders."""

    rank: int
    customer_id: int
    customer_name: str
    order_count: int
    total_spent: float


class CustomerBoard(msgspec.Struct):
    """The top customers of one currency, rank 1 first."""

    currency: str
    items: list[CustomerRow]


class ProductRow(msgspec.Struct):
    """One product on the board, by units sold in completed orders."""

    rank: int
    product_sku: str
    product_name: str
    total_quantity: int
    total_revenue: float
    order_count: int


class ProductBoard(msgspec.Struct):
    """The top products of one currency, rank 1 first."""

    currency: str
    items: list[ProductRow]


class CustomerView(msgspec.Struct):
    """One customer's completed orders in one currency and their rank by total spent."""

    customer_id: int
    customer_name: str
    currency: str
    order_count: int
    total_spent: float
    average_order_value: float
    first_order: Timestamp
    last_order: Timestamp
    rank: int


class CustomerRank(msgspec.Struct):
    """Where one customer stands on the board (1 = spent the most) among customers_ranked."""

    customer_id: int
    currency: str
    rank: int
    total_spent: float
    order_count: int
    customers_ranked: int


async def _standing(call: Call[CustomerPath, CurrencyQuery, None]) -> CustomerStanding:
    services = call.services
    currency = currency_of(call.query.currency, services.settings)
    found = await customer_standing(services.redis, services.keys, currency, call.path.id)
    if found is None:
        raise NotFound(f"Customer {call.path.id} has no completed order in {currency}.")
    return found


async def customer_board(call: Call[None, BoardQuery, None]) -> CustomerBoard:
    """The customers who spent the most, with their order count and latest name."""
    services = call.services
    currency = currency_of(call.query.currency, services.settings)
    rows = await top_customers(services.redis, services.keys, currency, call.query.limit)
    return CustomerBoard(
        currency,
        [
            CustomerRow(
                r.rank, r.customer_id, r.customer_name, r.order_count, money(r.total_spent_cents)
            )
            for r in rows
        ],
    )


async def product_board(call: Call[None, BoardQuery, None]) -> ProductBoard:
    """The products sold in the largest quantities, with their revenue and order count."""
    services = call.services
    currency = currency_of(call.query.currency, services.settings)
    rows = await top_products(services.redis, services.keys, currency, call.query.limit)
    return ProductBoard(
        currency,
        [
            ProductRow(
                p.rank,
                p.product_sku,
                p.product_name,
                p.total_quantity,
                money(p.total_revenue_cents),
                p.order_count,
            )
            for p in rows
        ],
    )


async def customer_rank(call: Call[CustomerPath, CurrencyQuery, None]) -> CustomerRank:
    """One customer's rank by total spent, and how many customers are ranked."""
    s = await _standing(call)
    return CustomerRank(
        customer_id=s.customer_id,
        currency=s.currency,
        rank=s.rank,
        total_spent=money(s.total_spent_cents),
        order_count=s.order_count,
        customers_ranked=s.customers_ranked,
    )


async def get_customer(call: Call[CustomerPath, CurrencyQuery, None]) -> CustomerView:
    """One customer's completed orders: count, total, average, first and last, and rank."""
    s = await _standing(call)
    return CustomerView(
        customer_id=s.customer_id,
        customer_name=s.customer_name,
        currency=s.currency,
        order_count=s.order_count,
        total_spent=money(s.total_spent_cents),
        average_order_value=money(s.average_order_value_cents),
        first_order=s.first_order,
        last_order=s.last_order,
        rank=s.rank,
    )


async def rebuild_leaderboards(call: Call[None, None, None]) -> RebuildReport:
    """Recompute every board from the snapshot store and swap them in atomically."""
    services = call.services
    try:
        report = await rebuild(
            services.redis, services.scripts, services.keys, services.settings.analytics_path
        )
    except RebuildBusy:
        raise Conflict(
            "A leaderboard rebuild is already running; try again when it ends."
        ) from None
    except RebuildLost:
        raise Conflict("The rebuild stalled and was abandoned; run it again.") from None
    return report
