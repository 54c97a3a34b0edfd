"""Leaderboard rebuild: recompute every board from the snapshot store and swap it in atomically.

The boards count a completion once the snapshot stage has registered the file holding it and
added its rows (lb_apply.lua), so they follow the registered store. A rebuild:
1. lb_rebuild_begin.lua sets the marker (the snapshot stage registers nothing while it stands,
   so the store stays fixed) and returns the manifest's files and the facts stream's unacked
   range.
2. DuckDB sums the files (analytics.boardsums), plus the unacked completions an earlier version
   committed: it counted those on the live boards as they completed, and they will not be
   counted again when registered. The sums are merged into the staging boards
   (lb_rebuild_merge.lua, in chunks); an earlier version's commits add to them too meanwhile.
3. lb_rebuild_swap.lua renames the staging boards over the live ones and drops the marker.
Readers see the old boards until the swap, then the new ones: never a partial board.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any, cast

import msgspec
import redis.asyncio as aredis

from streamproc.analytics.boardsums import CHUNK_ROWS, ROW_WIDTH, Rows, sum_source
from streamproc.analytics.facts import on_boards, row_of_message
from streamproc.analytics.store import FactStore, rows_sql, source_sql
from streamproc.errors import StreamprocError
from streamproc.keys import BOARDS, Keys
from streamproc.lua import AsyncScripts
from streamproc.models import COMPLETED
from streamproc.replies import id_key, text
from streamproc.transport import parse_entry

# The marker outlives a stalled rebuild by this much; each merged chunk renews it.
MARKER_TTL_MS = 120_000
READ_PAGE = 1_000


class RebuildBusy(StreamprocError):
    """Another rebuild is running."""


class RebuildLost(StreamprocError):
    """The rebuild's marker expired (it stalled for longer than MARKER_TTL_MS)."""


class RebuildReport(msgspec.Struct):
    """What a rebuild recomputed: currencies, board sizes, and the sources it read."""

    currencies: list[str]
    customers: int
    products: int
    facts_files: int
    # Completions not in the store yet that an earlier version counted on the boards as it
    # committed them (0 once they are snapshotted): the name is kept for the API's shape.
    unsnapshotted_orders: int
    seconds: float


FILES_SQL = "SELECT * FROM {src}"


def sum_boards(paths: list[str], late_rows: list[bytes], temp: Path) -> tuple[Rows, Rows]:
    """Customer and product merge rows over the given store files plus facts.fact_row rows of
    completions not yet in them (blocking)."""
    sources = [FILES_SQL.format(src=source_sql(paths))] if paths else []
    ndjson = temp / f"rebuild-{uuid.uuid4().hex}.ndjson"
    if late_rows:
        ndjson.write_bytes(b"".join(late_rows))
        sources.append(rows_sql(ndjson))
    if not sources:
        return [], []
    try:
        return sum_source("(" + " UNION ALL BY NAME ".join(f"({q})" for q in sources) + ")")
    finally:
        ndjson.unlink(missing_ok=True)


async def unacked_completions(
    client: aredis.Redis, stream: str, group: str, delivered: str, top: str
) -> list[bytes]:
    """Fact rows of the completions an earlier version counted on the boards as it committed
    them (facts.on_boards) among the stream's entries not acked when the rebuild began."""
    ids: list[bytes] = []
    start = "-"
    while delivered != "0-0":
        rows = await client.xpending_range(stream, group, min=start, max=delivered, count=READ_PAGE)
        ids += [cast(bytes, row["message_id"]) for row in rows]
        if len(rows) < READ_PAGE:
            break
        ms, seq = id_key(rows[-1]["message_id"])
        start = f"{ms}-{seq + 1}"
    entries: list[tuple[bytes, Any]] = []
    for i in range(0, len(ids), READ_PAGE):
        async with client.pipeline(transaction=False) as pipe:
            for entry_id in ids[i : i + READ_PAGE]:
                pipe.xrange(stream, min=entry_id, max=entry_id)
            for found in await pipe.execute():
                entries += found
    if id_key(top) > id_key(delivered):
        start = "(" + delivered
        while True:
            page = cast(
                list[tuple[bytes, Any]],
                await client.xrange(stream, min=start, max=top, count=READ_PAGE),
            )
            entries += page
            if len(page) < READ_PAGE:
                break
            start = "(" + text(page[-1][0])
    completed: list[bytes] = []
    for entry_id, fields in entries:
        message = parse_entry(entry_id, fields)
        completes = message.state == COMPLETED
        if message.order is not None and on_boards(completes, message.boards_pending):
            completed.append(row_of_message(message))
    return completed


async def rebuild(
    client: aredis.Redis, scripts: AsyncScripts, keys: Keys, store_root: Path
) -> RebuildReport:
    """Recompute every leaderboard and swap it in; raises RebuildBusy / RebuildLost."""
    started = time.monotonic()
    token = uuid.uuid4().hex
    staging = keys.leaderboard_prefix(staging=True)
    begun = await scripts.run(
        "lb_rebuild_begin",
        [
            keys.leaderboard_rebuild,
            keys.leaderboard_currencies(staging=True),
            keys.stream("snapshot"),
            keys.snapshot_files,
        ],
        [token, MARKER_TTL_MS, staging, keys.group("snapshot"), *BOARDS],
    )
    if text(begun[0]) == "busy":
        raise RebuildBusy("a leaderboard rebuild is already running")
    delivered, top = text(begun[1]), text(begun[2])
    files = [text(name) for name in begun[3:]]
    try:
        late = await unacked_completions(
            client, keys.stream("snapshot"), keys.group("snapshot"), delivered, top
        )
        store = FactStore(store_root)
        store.prepare()
        customers, products = await asyncio.to_thread(
            sum_boards, sorted(str(store_root / n) for n in files), late, store.temp
        )
        chunk: list[Any] = []
        merge_keys = [keys.leaderboard_rebuild, keys.leaderboard_currencies(staging=True)]
        for row in (*customers, *products):
            chunk += row
            if len(chunk) >= CHUNK_ROWS * ROW_WIDTH:
                await _merge(scripts, merge_keys, token, staging, chunk)
                chunk = []
        if chunk:
            await _merge(scripts, merge_keys, token, staging, chunk)
        swapped = await scripts.run(
            "lb_rebuild_swap",
            [
                keys.leaderboard_rebuild,
                keys.leaderboard_currencies(),
                keys.leaderboard_currencies(staging=True),
                keys.leaderboard_pending,
            ],
            [token, keys.leaderboard_prefix(), staging, *BOARDS],
        )
        if text(swapped) != "ok":
            raise RebuildLost("the rebuild stalled and its marker expired; run it again")
    except BaseException:
        # Give up the marker at once so the snapshot stage and commits go back to normal.
        if text(await client.get(keys.leaderboard_rebuild)) == token:
            await client.delete(keys.leaderboard_rebuild)
        raise
    return RebuildReport(
        currencies=sorted({row[1] for row in (*customers, *products)}),
        customers=len(customers),
        products=len(products),
        facts_files=len(files),
        unsnapshotted_orders=len(late),
        seconds=round(time.monotonic() - started, 3),
    )


async def _merge(
    scripts: AsyncScripts, keys: list[str], token: str, staging: str, chunk: list[Any]
) -> None:
    status = await scripts.run("lb_rebuild_merge", keys, [token, MARKER_TTL_MS, staging, *chunk])
    if text(status) != "ok":
        raise RebuildLost("the rebuild stalled and its marker expired; run it again")
