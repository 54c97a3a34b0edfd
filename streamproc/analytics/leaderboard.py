"""Reading the leaderboards: top customers and products of a currency, one customer's standing.

The boards are sorted sets the snapshot stage adds each registered file to (lb_apply.lua; see
keys.Keys.leaderboard), so a top-N read is O(log n + N) and a rank O(log n). Equal scores
rank by member, descending as text (Redis's order for ZREVRANGE).
"""

from __future__ import annotations

from typing import cast

import msgspec
import redis
import redis.asyncio as aredis

from streamproc.analytics.kpis import average_cents
from streamproc.keys import Keys
from streamproc.replies import text


class CustomerEntry(msgspec.Struct):
    """One row of the customer board (money in cents)."""

    rank: int
    customer_id: int
    customer_name: str
    order_count: int
    total_spent_cents: int


class ProductEntry(msgspec.Struct):
    """One row of the product board (money in cents)."""

    rank: int
    product_sku: str
    product_name: str
    total_quantity: int
    total_revenue_cents: int
    order_count: int


class CustomerCard(msgspec.Struct):
    """A customer's figures beside their score (customer_info, lib/leaderboard.lua)."""

    orders: int
    first_order: str
    last_order: str
    last_order_id: str
    name: str


def read_card(raw: bytes | str | None) -> CustomerCard:
    """`<orders>|<first date>|<last order_date>|<its order_id>|<name>` (the name may hold "|")."""
    parts = text(raw).split("|", 4)
    if len(parts) < 5 or not parts[0].isdigit():
        return CustomerCard(0, "", "", "", "")
    orders, first, last, order_id, name = parts
    return CustomerCard(int(orders), first, last, order_id, name)


class ProductCard(msgspec.Struct):
    """A product's figures beside its units sold (product_info, lib/leaderboard.lua)."""

    revenue_cents: int
    orders: int
    last_order: str
    last_order_id: str
    name: str


# A product's fields in the layout before cards (revenue, orders, latest key, name).
OLD_PRODUCT_FIELDS = ("r", "n", "k", "name")


def read_product_card(raw: bytes | str) -> ProductCard:
    """`<revenue cents>|<orders>|<order_date>|<order_id>|<name>` (`|||` before a named line; the
    name may hold "|")."""
    parts = text(raw).split("|", 4)
    if len(parts) < 5 or not parts[0].isdigit() or not parts[1].isdigit():
        return ProductCard(0, 0, "", "", "")
    revenue, orders, last, order_id, name = parts
    return ProductCard(int(revenue), int(orders), last, order_id, name)


def old_product_card(fields: list[bytes | None]) -> ProductCard:
    """A product's figures from the fields before cards (OLD_PRODUCT_FIELDS, as read)."""
    revenue, orders, key, name = (text(f) for f in fields)
    last, _, order_id = key.partition("|")
    return ProductCard(
        int(revenue) if revenue.isdigit() else 0,
        int(orders) if orders.isdigit() else 0,
        last,
        order_id,
        name,
    )


def boards_before_cards(client: redis.Redis, keys: Keys) -> list[str]:
    """The currencies whose customer figures are still in the layout before cards (`<id>:n`,
    `<id>:name`, …: every field has a colon, a card's is a bare id); a rebuild rewrites them.

    A few random fields per currency: O(1), for a check at start-up.
    """
    old = []
    for currency in sorted(text(c) for c in client.smembers(keys.leaderboard_currencies())):
        fields = cast(
            list[bytes], client.hrandfield(keys.leaderboard(currency, "customer_info"), 5)
        )
        if any(":" in text(field) for field in fields or []):
            old.append(currency)
    return old


class CustomerStanding(msgspec.Struct):
    """One customer's completed orders in one currency, and their rank by total spent."""

    customer_id: int
    customer_name: str
    currency: str
    order_count: int
    total_spent_cents: int
    average_order_value_cents: int
    first_order: str
    last_order: str
    rank: int
    customers_ranked: int


async def _top(client: aredis.Redis, board: str, limit: int) -> list[tuple[bytes, float]]:
    rows = await client.zrevrange(board, 0, limit - 1, withscores=True)
    return cast(list[tuple[bytes, float]], rows)


async def _hmget(client: aredis.Redis, key: str, fields: list[str]) -> list[bytes | None]:
    return cast(list[bytes | None], await client.hmget(key, fields))


async def top_customers(
    client: aredis.Redis, keys: Keys, currency: str, limit: int
) -> list[CustomerEntry]:
    """The `limit` customers with the highest total spent."""
    rows = await _top(client, keys.leaderboard(currency, "customers"), limit)
    if not rows:
        return []
    members = [m.decode() for m, _ in rows]
    cards = await _hmget(client, keys.leaderboard(currency, "customer_info"), members)
    entries = []
    for rank, ((member, score), card) in enumerate(zip(rows, cards, strict=True), start=1):
        info = read_card(card)
        entries.append(CustomerEntry(rank, int(member), info.name, info.orders, int(score)))
    return entries


async def top_products(
    client: aredis.Redis, keys: Keys, currency: str, limit: int
) -> list[ProductEntry]:
    """The `limit` products with the most units sold."""
    rows = await _top(client, keys.leaderboard(currency, "products"), limit)
    if not rows:
        return []
    info = keys.leaderboard(currency, "product_info")
    skus = [m.decode() for m, _ in rows]
    raw = await _hmget(client, info, skus)
    # A SKU no completion touched since cards came keeps the fields from before: one more read.
    missing = [sku for sku, card in zip(skus, raw, strict=True) if card is None]
    old: dict[str, ProductCard] = {}
    if missing:
        names = [f"{sku}:{suffix}" for sku in missing for suffix in OLD_PRODUCT_FIELDS]
        found = await _hmget(client, info, names)
        old = {sku: old_product_card(found[4 * n : 4 * n + 4]) for n, sku in enumerate(missing)}
    entries = []
    for rank, (sku, (_, score), card) in enumerate(zip(skus, rows, raw, strict=True), start=1):
        figures = old[sku] if card is None else read_product_card(card)
        entries.append(
            ProductEntry(rank, sku, figures.name, int(score), figures.revenue_cents, figures.orders)
        )
    return entries


async def customer_standing(
    client: aredis.Redis, keys: Keys, currency: str, customer_id: int
) -> CustomerStanding | None:
    """One customer's figures and rank; None when they have no completed order in `currency`."""
    board = keys.leaderboard(currency, "customers")
    member = str(customer_id)
    async with client.pipeline(transaction=True) as pipe:
        pipe.zscore(board, member)
        pipe.zrevrank(board, member)
        pipe.zcard(board)
        pipe.hget(keys.leaderboard(currency, "customer_info"), member)
        score, rank, size, card = await pipe.execute()
    if score is None or rank is None:
        return None
    info = read_card(card)
    spent = int(score)
    return CustomerStanding(
        customer_id=customer_id,
        customer_name=info.name,
        currency=currency,
        order_count=info.orders,
        total_spent_cents=spent,
        average_order_value_cents=average_cents(spent, info.orders),
        first_order=info.first_order,
        last_order=info.last_order,
        rank=int(rank) + 1,
        customers_ranked=int(size),
    )
