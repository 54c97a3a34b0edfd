"""The analytics commands: `snapshot`, `kpis` and `leaderboard show|rebuild`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import date
from typing import TYPE_CHECKING, Any, TypeVar

import click
import msgspec

from streamproc.cli import Env, handle_errors, pass_env
from streamproc.errors import ConfigError
from streamproc.money import format_cents
from streamproc.views import table

if TYPE_CHECKING:
    import redis.asyncio as aredis

T = TypeVar("T")


def _run(env: Env, work: Callable[[aredis.Redis], Awaitable[T]]) -> T:
    # Imported here: every command registers at start-up, and `ingest` needs neither.
    import asyncio

    from streamproc.connection import async_client

    url = env.url
    env.client().close()  # fail fast and clearly when the server is not there

    async def main() -> T:
        client = async_client(url, max_connections=8)
        try:
            return await work(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


@click.command()
@pass_env
@handle_errors
def snapshot(env: Env) -> None:
    """Append every terminal order not yet in the analytics store now, then merge small files."""
    import asyncio

    from streamproc.analytics.snapshotter import SnapshotLoop
    from streamproc.analytics.store import FactStore, load_manifest
    from streamproc.context import StageContext
    from streamproc.transport import StageStream, ensure_groups
    from streamproc.worker import default_consumer_name

    async def work(client: aredis.Redis) -> None:
        ctx = StageContext.build(env.settings, client)
        await ensure_groups(client, ctx.keys)
        stream = StageStream(client, ctx.scripts, ctx.keys, "snapshot", default_consumer_name())
        loop = SnapshotLoop(ctx, stream, FactStore(env.settings.analytics_path), one_shot=True)
        await loop.run(asyncio.Event())
        # Forget this one-shot consumer only when it owns nothing: deleting a consumer drops
        # its pending entries, which would then never be written.
        owned = await client.xpending_range(
            stream.stream, stream.group, "-", "+", 1, consumername=stream.consumer
        )
        if not owned:
            await client.xgroup_delconsumer(stream.stream, stream.group, stream.consumer)
        if loop.fatal is not None:
            raise loop.fatal
        current = await load_manifest(client, ctx.keys)
        click.echo(
            f"snapshot: {loop.outcomes['facts']} facts written in {loop.outcomes['files']} "
            f"files; the store holds {current.rows} facts in {len(current.files)} files "
            f"(version {current.version}, {env.settings.analytics_path})"
        )

    _run(env, work)


def _day(value: str | None, name: str) -> str | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value).isoformat()
    except ValueError:
        raise ConfigError(f"{name} {value!r} is not a date (YYYY-MM-DD)") from None


@click.command()
@click.option("--date", "day", help="One order day (YYYY-MM-DD).")
@click.option("--start", help="First order day of a range (default: the store's first).")
@click.option("--end", help="Last order day of a range, included (default: the store's last).")
@click.option("--currency", help="ISO currency (default: STREAMPROC_DEFAULT_CURRENCY).")
@click.option("--json", "as_json", is_flag=True, help="Print the KPIs as one JSON object.")
@pass_env
@handle_errors
def kpis(
    env: Env,
    day: str | None,
    start: str | None,
    end: str | None,
    currency: str | None,
    as_json: bool,
) -> None:
    """KPIs of completed orders by order day, from the analytics store (run `snapshot` first)."""
    from streamproc.analytics.kpis import RangeKpis, range_kpis
    from streamproc.analytics.store import load_manifest

    cur = (currency or env.settings.default_currency).upper()
    first, last = _day(day or start, "--start"), _day(day or end, "--end")

    async def work(client: aredis.Redis) -> RangeKpis | None:
        nonlocal first, last
        if first is None or last is None:
            current = await load_manifest(client, env.keys)
            if not current.files:
                return None
            first = first or min(i.min_day for i in current.files.values())
            last = last or max(i.max_day for i in current.files.values())
        if first > last:
            raise ConfigError(f"the range starts ({first}) after it ends ({last})")
        return await range_kpis(client, env.keys, env.settings.analytics_path, cur, first, last)

    result = _run(env, work)
    if as_json:
        click.echo(msgspec.json.encode(result).decode())
        return
    if result is None:
        click.echo("the analytics store is empty (is the snapshot stage running?)")
        return
    rows = [
        [
            d.date,
            format_cents(d.total_revenue_cents),
            d.order_count,
            format_cents(d.average_order_value_cents),
            d.unique_customers,
            d.items_sold,
            d.failed_count,
        ]
        for d in result.days
        if d.order_count or d.failed_count
    ]
    rows.append(
        [
            "total",
            format_cents(result.total_revenue_cents),
            result.order_count,
            format_cents(result.average_order_value_cents),
            result.unique_customers,
            result.items_sold,
            result.failed_count,
        ]
    )
    click.echo(f"KPIs in {result.currency}, order days {result.start_date} .. {result.end_date}")
    table(["day", "revenue", "orders", "aov", "customers", "items", "failed"], rows)


@click.group()
def leaderboard() -> None:
    """Top customers and products, kept live as orders complete."""


@leaderboard.command("show")
@click.option("--limit", type=click.IntRange(1, 500), default=5, help="Rows per board.")
@click.option("--currency", help="ISO currency (default: STREAMPROC_DEFAULT_CURRENCY).")
@click.option("--json", "as_json", is_flag=True, help="Print both boards as one JSON object.")
@pass_env
@handle_errors
def leaderboard_show(env: Env, limit: int, currency: str | None, as_json: bool) -> None:
    """Print the top customers and the top products."""
    from streamproc.analytics.leaderboard import top_customers, top_products

    cur = (currency or env.settings.default_currency).upper()

    async def work(client: aredis.Redis) -> tuple[Any, Any]:
        return (
            await top_customers(client, env.keys, cur, limit),
            await top_products(client, env.keys, cur, limit),
        )

    customers, products = _run(env, work)
    if as_json:
        click.echo(msgspec.json.encode({"customers": customers, "products": products}).decode())
        return
    click.echo(f"Top customers ({cur})")
    table(
        ["rank", "customer", "name", "orders", "spent"],
        [
            [
                c.rank,
                c.customer_id,
                c.customer_name,
                c.order_count,
                format_cents(c.total_spent_cents),
            ]
            for c in customers
        ],
    )
    click.echo(f"\nTop products ({cur})")
    table(
        ["rank", "sku", "name", "units", "revenue", "orders"],
        [
            [
                p.rank,
                p.product_sku,
                p.product_name,
                p.total_quantity,
                format_cents(p.total_revenue_cents),
                p.order_count,
            ]
            for p in products
        ],
    )


@leaderboard.command("rebuild")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@pass_env
@handle_errors
def leaderboard_rebuild(env: Env, as_json: bool) -> None:
    """Recompute every leaderboard from the analytics store and swap it in atomically."""
    from streamproc.analytics.rebuild import RebuildReport, rebuild
    from streamproc.lua import AsyncScripts

    async def work(client: aredis.Redis) -> RebuildReport:
        scripts = AsyncScripts.register(client)
        return await rebuild(client, scripts, env.keys, env.settings.analytics_path)

    report = _run(env, work)
    if as_json:
        click.echo(msgspec.json.encode(report).decode())
    else:
        click.echo(
            f"leaderboards rebuilt: {report.customers} customers and {report.products} products "
            f"in {', '.join(report.currencies) or 'no currency'} from {report.facts_files} files"
            + (
                f" and {report.unsnapshotted_orders} completions an earlier version counted "
                "before they were snapshotted"
                if report.unsnapshotted_orders
                else ""
            )
            + f", in {report.seconds:.2f} s"
        )


def register(main: click.Group) -> None:
    """Add these commands to the top-level group."""
    main.add_command(snapshot)
    main.add_command(kpis)
    main.add_command(leaderboard)
