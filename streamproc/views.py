"""Human-readable tables for the CLI (the JSON forms come straight from the structs)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:  # imported by every command at start-up; these import redis-py
    from streamproc.deadletters import DeadLetter
    from streamproc.status import Status
    from streamproc.stock import StockRow


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print rows under a header, columns aligned (the first left, the rest right)."""
    cells = [list(map(str, header))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for row in cells:
        click.echo(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )


def print_status(status: Status) -> None:
    """Stages, orders by state, dead letters and stock."""
    table(
        ["stage", "length", "lag", "pending", "consumers", "oldest_pending_ms"],
        [
            [name, s.length, s.lag, s.pending, s.consumers, s.oldest_pending_ms]
            for name, s in status.stages.items()
        ],
    )
    click.echo("")
    table(["state", "orders"], list(status.orders.items()))
    click.echo(f"\ndead letters: {status.dead_letters}")
    if status.boards_pending:
        click.echo(f"snapshot files still being added to the leaderboards: {status.boards_pending}")
    click.echo("")
    table(
        ["sku", "available", "reserved", "committed"],
        [[sku, s.available, s.reserved, s.committed] for sku, s in status.stock.items()],
    )


def print_stock(rows: Sequence[StockRow]) -> None:
    """The stock catalogue."""
    table(
        ["sku", "name", "initial", "available", "reserved", "committed"],
        [[r.sku, r.name, r.initial, r.available, r.reserved, r.committed] for r in rows],
    )


def print_dead_letters(letters: Sequence[DeadLetter]) -> None:
    """The dead-letter list."""
    if not letters:
        click.echo("no dead letters")
        return
    table(
        ["id", "stage", "order", "deliveries", "error"],
        [[d.id, d.stage, d.order_id, d.deliveries, d.error[:80]] for d in letters],
    )
