"""The leaderboards as the snapshot stage writes them: a registered file's completions, summed
per customer and per SKU (analytics/boardsums.py) and added by snapshot_register.lua
(lib/leaderboard.lua), against the per-order rules.

The boards must come out exactly as one update per order in stream order would leave them: sums,
the first order date, and the name on the latest order by (order_date, order_id), where an equal
key keeps the name already there and an SKU line without a name never replaces one. Checked with
several orders of the same customer and SKU in one file, out of date order, over files of many
sizes, against a rebuild from the store, and for completions an earlier version counted as it
committed them (their facts-stream entries have no b=1), which must not be counted twice.
"""

from __future__ import annotations

import asyncio
import logging
import random
from pathlib import Path
from typing import Any

import pytest
import redis

from streamproc.analytics import snapshotter
from streamproc.analytics.boardsums import Pending, parse_pending
from streamproc.analytics.leaderboard import (
    CustomerCard,
    ProductEntry,
    boards_before_cards,
    read_card,
    read_product_card,
    top_products,
)
from streamproc.analytics.rebuild import RebuildReport, rebuild
from streamproc.analytics.snapshotter import SnapshotLoop
from streamproc.analytics.store import FactStore
from streamproc.connection import async_client
from streamproc.context import StageContext
from streamproc.keys import BOARDS
from streamproc.lua import SyncScripts
from streamproc.models import Line, Order, encode_order
from streamproc.settings import Settings
from streamproc.transport import Decision, StageStream, ensure_groups
from tests.helpers import consume_start_line
from tests.support import KEYS


def expected_boards(orders: list[Order]) -> dict[str, Any]:
    """The boards as one update per order (the rules of lib/leaderboard.lua) leaves them."""
    boards: dict[str, Any] = {}
    cards: dict[str, dict[str, list[Any]]] = {}  # currency -> id -> [orders, first, key, name]
    # currency -> SKU -> [revenue, orders, latest key of a named line, name]
    products: dict[str, dict[str, list[Any]]] = {}
    for o in orders:
        cur, cid, key = o.currency, str(o.customer_id), f"{o.order_date}|{o.order_id}"
        scores = boards.setdefault(f"{cur}:customers", {})
        scores[cid] = scores.get(cid, 0) + o.total_cents
        card = cards.setdefault(cur, {}).setdefault(cid, [0, o.order_date, key, o.customer_name])
        card[0] += 1
        card[1] = min(card[1], o.order_date)
        if key > card[2]:
            card[2], card[3] = key, o.customer_name
        boards[f"{cur}:customer_info"] = {
            c: f"{n}|{first}|{k}|{name}" for c, (n, first, k, name) in cards[cur].items()
        }
        per: dict[str, list[Any]] = {}
        for ln in o.lines:
            p = per.setdefault(ln.sku, [0, 0, ""])
            p[0] += ln.quantity
            p[1] += ln.amount_cents
            if ln.name:
                p[2] = ln.name
        units = boards.setdefault(f"{cur}:products", {})
        for sku, (qty, cents, name) in per.items():
            units[sku] = units.get(sku, 0) + qty
            product = products.setdefault(cur, {}).setdefault(sku, [0, 0, "|", ""])
            product[0] += cents
            product[1] += 1
            if name and (product[2] == "|" or key > product[2]):
                product[2], product[3] = key, name
        boards[f"{cur}:product_info"] = {
            sku: f"{r}|{n}|{k}|{name}" for sku, (r, n, k, name) in products[cur].items()
        }
        boards.setdefault("currencies", set()).add(cur)
    return boards


def stored_boards(r: redis.Redis, staging: bool = False) -> dict[str, Any]:
    """Every board key under the live (or staging) prefix, as stored."""
    out: dict[str, Any] = {}
    currencies = r.smembers(KEYS.leaderboard_currencies(staging))
    if currencies:
        out["currencies"] = set(currencies)
    for cur in currencies:
        for board in BOARDS:
            key = KEYS.leaderboard(cur, board, staging)
            if board in ("customers", "products"):
                rows = r.zrange(key, 0, -1, withscores=True)
                out[f"{cur}:{board}"] = {m: int(s) for m, s in rows}
                assert all(s == int(s) for _, s in rows)
            else:
                out[f"{cur}:{board}"] = r.hgetall(key)
    return out


def put_orders(r: redis.Redis, orders: list[Order], payloads: dict[str, bytes]) -> None:
    """Each order waiting for finalize, as payment leaves it."""
    for o in orders:
        r.hset(
            KEYS.order(o.order_id),
            mapping={
                "s": "paid",
                "a": "1",
                "k": "finalize",
                "c": 1,
                "h": "pending@1;paid@2",
                "d": payloads.get(o.order_id, encode_order(o)),
            },
        )


def complete_and_register(
    redis_url: str,
    root: Path,
    orders: list[Order],
    sizes: list[int],
    payloads: dict[str, bytes],
    claim_idle_ms: int = 15_000,
    register: bool = True,
) -> list[dict[str, int]]:
    """Complete every order at finalize in batches of the given sizes, each batch's facts then
    written and registered as a file of its own by the one-shot snapshot stage (`register`);
    per batch what the snapshot stage did (facts, files, dead_lettered)."""

    async def main() -> list[dict[str, int]]:
        client = async_client(redis_url)
        try:
            settings = Settings(
                redis_url=redis_url, analytics_dir=root, claim_idle_ms=claim_idle_ms
            )
            ctx = StageContext.build(settings, client)
            await ensure_groups(client, KEYS)
            for o in orders:
                fields = {
                    "o": o.order_id,
                    "a": "1",
                    "s": "paid",
                    "d": payloads.get(o.order_id, encode_order(o)),
                }
                await client.xadd(KEYS.stream("finalize"), fields)
            stream = StageStream(client, ctx.scripts, KEYS, "finalize", "c1")
            out: list[dict[str, int]] = []
            for size in sizes:
                batch = await stream.read(size, None) if size else []
                committed = await stream.commit([Decision(m, "completed") for m in batch])
                assert committed.results == [1] * size
                if not register:
                    continue
                facts = StageStream(client, ctx.scripts, KEYS, "snapshot", "s1")
                loop = SnapshotLoop(ctx, facts, FactStore(root), one_shot=True)
                await loop.run(asyncio.Event())
                assert loop.fatal is None
                out.append(dict(loop.outcomes))
            return out
        finally:
            await client.aclose()

    return asyncio.run(main())


def rebuild_boards(redis_url: str, root: Path) -> RebuildReport:
    """`leaderboard rebuild`, in this process."""

    async def main() -> RebuildReport:
        client = async_client(redis_url)
        try:
            ctx = StageContext.build(Settings(redis_url=redis_url, analytics_dir=root), client)
            return await rebuild(client, ctx.scripts, KEYS, root)
        finally:
            await client.aclose()

    return asyncio.run(main())


def write_boards(r: redis.Redis, boards: dict[str, Any]) -> None:
    """Store boards in the shape expected_boards gives (as an earlier version left them)."""
    for cur in boards.get("currencies", ()):
        r.sadd(KEYS.leaderboard_currencies(), cur)
        for board in BOARDS:
            key, value = KEYS.leaderboard(cur, board), boards[f"{cur}:{board}"]
            if board in ("customers", "products"):
                r.zadd(key, value)
            else:
                r.hset(key, mapping=value)


def random_orders(rng: random.Random, n: int) -> list[Order]:
    """Few customers and SKUs, dates out of order and often equal, SKUs repeated within an
    order, lines without a name, customer names with "|", two currencies."""
    orders = []
    for i in range(n):
        lines = [
            Line(
                f"SKU-{rng.randrange(6)}",
                rng.choice(["", "", f"Name{rng.randrange(9)}"]),
                rng.randrange(1, 5),
                rng.randrange(1, 50_000),
            )
            for _ in range(rng.randrange(1, 5))
        ]
        orders.append(
            Order(
                f"O{rng.randrange(100_000):05d}-{i:04d}",
                rng.randrange(1, 8),
                # Names may hold the card's separator (it is the card's last field).
                rng.choice([f"Cust{rng.randrange(20)}", f"Cust|{rng.randrange(3)}|x"]),
                rng.choice(["USD", "EUR"]),
                f"2025-11-{rng.randrange(10, 14)}T00:00:00Z",
                lines,
            )
        )
    return orders


def test_registered_files_put_on_the_boards_what_one_update_per_order_would(
    redis_url: str, r: redis.Redis, tmp_path: Path
) -> None:
    rng = random.Random(8)
    orders = random_orders(rng, 300)
    put_orders(r, orders, {})
    sizes = [1, 7, 50, 200, 42]
    outcomes = complete_and_register(redis_url, tmp_path, orders[:1], sizes[:1], {})
    assert outcomes == [{"facts": 1, "files": 1, "dead_lettered": 0}]
    assert stored_boards(r) == expected_boards(orders[:1])
    outcomes = complete_and_register(redis_url, tmp_path, orders[1:], sizes[1:], {})
    assert [o["facts"] for o in outcomes] == sizes[1:]
    expected = expected_boards(orders)
    assert stored_boards(r) == expected
    assert not r.keys(KEYS.leaderboard_prefix(staging=True) + "*")
    # Every completion's entry was marked for the boards; a rebuild from the files agrees.
    report = rebuild_boards(redis_url, tmp_path)
    assert (report.unsnapshotted_orders, report.facts_files) == (0, len(sizes))
    assert stored_boards(r) == expected


def test_boards_wait_for_the_file_not_the_commit(
    redis_url: str, r: redis.Redis, tmp_path: Path
) -> None:
    """A completion is on the boards once its fact is registered, not before: the boards
    always equal the registered store."""
    orders = random_orders(random.Random(5), 5)
    put_orders(r, orders, {})
    assert complete_and_register(redis_url, tmp_path, orders, [5], {}, register=False) == []
    assert [r.hget(KEYS.order(o.order_id), "s") for o in orders] == ["completed"] * 5
    assert stored_boards(r) == {}
    entries = r.xrange(KEYS.stream("snapshot"))
    assert [fields.get("b") for _, fields in entries] == ["1"] * 5
    # Notify reads these very entries (its group on the same stream); the mark is the snapshot
    # stage's alone, and nothing goes to notify's own stream.
    assert KEYS.sources("notify")[0] == KEYS.stream("snapshot")
    assert r.xlen(KEYS.stream("notify")) == 0
    assert complete_and_register(redis_url, tmp_path, [], [0], {}) == [
        {"facts": 5, "files": 1, "dead_lettered": 0}
    ]
    assert stored_boards(r) == expected_boards(orders)


def test_same_customer_and_sku_in_one_file_out_of_date_order(
    redis_url: str, r: redis.Redis, tmp_path: Path
) -> None:
    d1, d2 = "2025-11-12T00:00:00Z", "2025-11-10T00:00:00Z"
    orders = [
        # Latest first; the later, older order must neither rename nor move the first date up.
        Order("B2", 5, "Newest", "USD", d1, [Line("S", "Widget", 1, 100), Line("S", "", 2, 100)]),
        Order("A1", 5, "Oldest", "USD", d2, [Line("S", "Old", 3, 10)]),
        # Same date, smaller id: not the latest either; then an unnamed line on the latest key.
        Order("A9", 5, "Middle", "USD", d1, [Line("S", "Mid", 1, 1)]),
        Order("C3", 5, "Latest", "USD", d1, [Line("S", "", 1, 1)]),
    ]
    put_orders(r, orders, {})
    complete_and_register(redis_url, tmp_path, orders, [4], {})
    assert stored_boards(r) == expected_boards(orders)
    card = read_card(r.hget(KEYS.leaderboard("USD", "customer_info"), "5"))
    assert card == CustomerCard(4, d2, d1, "C3", "Latest")
    pinfo = r.hgetall(KEYS.leaderboard("USD", "product_info"))
    assert pinfo == {"S": f"{300 + 30 + 1 + 1}|4|{d1}|B2|Widget"}
    assert r.zscore(KEYS.leaderboard("USD", "products"), "S") == 3 + 3 + 1 + 1


def test_an_order_whose_payload_cannot_be_read_is_dead_lettered_and_the_rest_count(
    redis_url: str, r: redis.Redis, tmp_path: Path
) -> None:
    orders = random_orders(random.Random(3), 6)
    # The fifth order's stored payload is not an order: the snapshot stage cannot use its fact.
    bad = orders[4].order_id
    payloads = {bad: b'["' + bad.encode() + b'", 1, "x", "USD"'}
    put_orders(r, orders, payloads)
    outcomes = complete_and_register(redis_url, tmp_path, orders, [6], payloads)
    assert outcomes == [{"facts": 5, "files": 1, "dead_lettered": 1}]
    good = orders[:4] + orders[5:]
    assert stored_boards(r) == expected_boards(good)
    letters = r.xrange(KEYS.dead_letters)
    assert [(f["stage"], f["o"]) for _, f in letters] == [("snapshot", bad)]
    assert r.xpending(KEYS.stream("snapshot"), KEYS.group("snapshot"))["pending"] == 0


def test_equal_latest_keys_keep_the_name_registered_first(
    redis_url: str, r: redis.Redis, tmp_path: Path
) -> None:
    # Two completions carrying the same (order_date, order_id), as a re-submitted order's can:
    # the first one's names stay, in one file (the earlier fact) or over two (the earlier file),
    # as with one update per order.
    date = "2025-11-12T00:00:00Z"
    same = [
        Order("T", 6, "First", "EUR", date, [Line("S", "One", 1, 5), Line("S", "Last", 1, 5)]),
        Order("T", 6, "Second", "EUR", date, [Line("S", "Two", 1, 5)]),
        Order("T", 6, "Third", "EUR", date, [Line("S", "Three", 1, 5)]),
    ]
    orders = [Order(f"T{i}", 6, "x", "EUR", date, []) for i in (1, 2, 3)]
    payloads = {f"T{i}": encode_order(o) for i, o in zip((1, 2, 3), same, strict=True)}
    put_orders(r, orders, payloads)
    complete_and_register(redis_url, tmp_path, orders, [2, 1], payloads)
    assert stored_boards(r) == expected_boards(same)
    assert read_card(r.hget(KEYS.leaderboard("EUR", "customer_info"), "6")).name == "First"
    # Of one order's lines of a SKU, the last named one names it (as the order's own sums did).
    assert r.hget(KEYS.leaderboard("EUR", "product_info"), "S") == f"20|3|{date}|T|Last"


def test_completions_an_earlier_version_counted_are_not_counted_again(
    redis_url: str, r: redis.Redis, tmp_path: Path
) -> None:
    """An upgrade: facts-stream entries an earlier version wrote (no b=1) are already on the
    boards, which it updated as it committed them. Registering them adds nothing; a rebuild
    while they wait counts them, since no file holds them yet; later completions count once."""
    rng = random.Random(21)
    earlier, later = random_orders(rng, 40), random_orders(rng, 30)
    write_boards(r, expected_boards(earlier))
    for o in earlier:
        r.xadd(
            KEYS.stream("snapshot"),
            {"o": o.order_id, "a": "1", "s": "completed", "d": encode_order(o), "c": "1"},
        )
    put_orders(r, later, {})
    report = rebuild_boards(redis_url, tmp_path)
    assert (report.unsnapshotted_orders, report.facts_files) == (len(earlier), 0)
    assert stored_boards(r) == expected_boards(earlier)
    # The later orders complete; one file holds both kinds of fact and adds the later ones only.
    outcomes = complete_and_register(redis_url, tmp_path, later, [30], {})
    assert outcomes == [{"facts": 70, "files": 1, "dead_lettered": 0}]
    assert stored_boards(r) == expected_boards(earlier + later)
    report = rebuild_boards(redis_url, tmp_path)
    assert (report.unsnapshotted_orders, report.facts_files) == (0, 1)
    assert stored_boards(r) == expected_boards(earlier + later)


def test_a_file_goes_to_the_boards_in_chunks_each_added_once(
    redis_url: str, r: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file's rows are added CHUNK_ROWS at a time, each chunk its own script call; a chunk
    sent again, or out of turn, is refused and adds nothing."""
    monkeypatch.setattr(snapshotter, "CHUNK_ROWS", 7)
    calls: list[tuple[str, int, str]] = []
    real = SnapshotLoop._apply_chunk

    async def spy(self: SnapshotLoop, name: str, number: int, rows: list[Any]) -> list[Any]:
        reply = await real(self, name, number, rows)
        calls.append((name, number, reply[0].decode()))
        return reply

    monkeypatch.setattr(SnapshotLoop, "_apply_chunk", spy)
    orders = random_orders(random.Random(12), 120)
    put_orders(r, orders, {})
    complete_and_register(redis_url, tmp_path, orders, [50, 70], {})
    assert stored_boards(r) == expected_boards(orders)
    assert not r.exists(KEYS.leaderboard_pending)
    files = sorted({name for name, _, _ in calls})
    assert len(files) == 2
    for name in files:
        numbers = [n for f, n, _ in calls if f == name]
        assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) > 2, numbers
    assert {status for _, _, status in calls} == {"ok"}
    # The last chunk of the second file once more: its record is gone, nothing is added.
    scripts = SyncScripts.register(r)
    again = [KEYS.leaderboard_pending, KEYS.leaderboard_currencies()]
    row = ["c", "USD", "1", "100", "", "1", "Again", "2025-11-10", "2025-11-10|X"]
    assert scripts.run("lb_apply", again, [files[1], 3, 1, KEYS.leaderboard_prefix(), *row]) == [
        "gone"
    ]
    # Out of turn: chunk 3 while chunk 1 is the next one.
    r.hset(KEYS.leaderboard_pending, "f", Pending(0, 4, 7, 1, []).encode())
    reply = scripts.run("lb_apply", again, ["f", 3, 1, KEYS.leaderboard_prefix(), *row])
    assert reply == ["taken", 0]
    assert stored_boards(r) == expected_boards(orders)


def test_chunks_a_consumer_left_unfinished_are_finished_once_from_the_file(
    redis_url: str, r: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A consumer that stops after some of a file's chunks (it died) leaves the file's record:
    once it has not moved for the reclaim time, another consumer sums the file again and adds
    the chunks after those that are in. A rebuild instead takes the file whole and drops the
    record. Compaction leaves such a file alone until its chunks are in."""
    monkeypatch.setattr(snapshotter, "CHUNK_ROWS", 5)
    real = SnapshotLoop._add_to_boards

    async def stop_after_two(
        self: SnapshotLoop, name: str, chunks: list[list[Any]], applied: int
    ) -> None:
        await real(self, name, chunks[:2], applied)  # the third never comes: a crash

    orders = random_orders(random.Random(13), 60)
    put_orders(r, orders, {})
    with monkeypatch.context() as crash:
        crash.setattr(SnapshotLoop, "_add_to_boards", stop_after_two)
        complete_and_register(redis_url, tmp_path, orders[:30], [30], {})
    (name,) = r.hkeys(KEYS.leaderboard_pending)
    pending = parse_pending(r.hget(KEYS.leaderboard_pending, name) or "")
    assert pending is not None and (pending.applied, pending.rows_per_chunk) == (2, 5)
    assert pending.chunks > 2
    assert stored_boards(r) != expected_boards(orders[:30])
    # Compaction refuses a file whose chunks are not all in.
    scripts = SyncScripts.register(r)
    compact_keys = [KEYS.snapshot_files, KEYS.snapshot_trash, KEYS.leaderboard_rebuild,
                    KEYS.leaderboard_pending]  # fmt: skip
    assert scripts.run("snapshot_compact", compact_keys, ["m", "{}", 1, name]) == "held"
    # Not yet stalled (the record moved less than the reclaim time ago): left alone.
    complete_and_register(redis_url, tmp_path, [], [0], {}, claim_idle_ms=600_000)
    assert r.hexists(KEYS.leaderboard_pending, name)
    # Stalled: finished by the next consumer, from the third chunk on.
    complete_and_register(redis_url, tmp_path, orders[30:], [30], {}, claim_idle_ms=10)
    assert not r.exists(KEYS.leaderboard_pending)
    assert stored_boards(r) == expected_boards(orders)

    # A rebuild while a file's chunks are unfinished counts it whole and drops its record.
    more = random_orders(random.Random(14), 30)
    put_orders(r, more, {})
    with monkeypatch.context() as crash:
        crash.setattr(SnapshotLoop, "_add_to_boards", stop_after_two)
        complete_and_register(redis_url, tmp_path, more, [30], {})
    assert r.hlen(KEYS.leaderboard_pending) == 1
    rebuild_boards(redis_url, tmp_path)
    assert not r.exists(KEYS.leaderboard_pending)
    assert stored_boards(r) == expected_boards(orders + more)
    complete_and_register(redis_url, tmp_path, [], [0], {}, claim_idle_ms=10)
    assert stored_boards(r) == expected_boards(orders + more)


def test_a_board_that_cannot_be_written_leaves_the_file_registered(
    redis_url: str, r: redis.Redis, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A board key of the wrong type: the file is registered and its facts acked all the same
    (written again, they would be counted twice on every other board), and the error logged."""
    orders = [Order("W1", 5, "Pat", "USD", "2025-11-10T00:00:00Z", [Line("S", "", 1, 100)])]
    r.set(KEYS.leaderboard("USD", "customers"), "not a board")
    put_orders(r, orders, {})
    caplog.set_level(logging.ERROR, logger="streamproc.snapshot")
    assert complete_and_register(redis_url, tmp_path, orders, [1], {}) == [
        {"facts": 1, "files": 1, "dead_lettered": 0}
    ]
    assert "could not take" in caplog.text and "WRONGTYPE" in caplog.text
    assert r.hlen(KEYS.snapshot_files) == 1
    assert r.xpending(KEYS.stream("snapshot"), KEYS.group("snapshot"))["pending"] == 0


def test_consume_warns_about_customer_figures_written_before_cards(
    r: redis.Redis, sp_env: dict[str, str]
) -> None:
    """Boards written by an earlier version (a field per figure) are named at start-up, with the
    rebuild that rewrites them; boards of cards are not."""
    r.sadd(KEYS.leaderboard_currencies(), "USD", "EUR")
    r.hset(KEYS.leaderboard("EUR", "customer_info"), "6", "1|d|d|T|Six")
    r.hset(KEYS.leaderboard("USD", "customer_info"), mapping={"5:n": "2", "5:name": "Old"})
    assert boards_before_cards(r, KEYS) == ["USD"]
    seen = consume_start_line(sp_env, "leaderboard")
    assert "the USD customer leaderboard" in seen and "leaderboard rebuild" in seen
    assert "EUR" not in seen


def test_product_figures_written_before_cards_fold_into_the_first_card(
    redis_url: str, r: redis.Redis, tmp_path: Path
) -> None:
    """A SKU's fields from before cards (`:r`, `:n`, `:k`, `:name`) are taken into its card by
    the next registered file and dropped; untouched ones are still read by the board's reader."""
    info = KEYS.leaderboard("USD", "product_info")
    r.sadd(KEYS.leaderboard_currencies(), "USD")
    r.zadd(KEYS.leaderboard("USD", "products"), {"OLD": 7, "KEPT": 40, "BARE": 1})
    r.hset(
        info,
        mapping={
            "OLD:r": "700",
            "OLD:n": "3",
            "OLD:k": "2025-11-20T00:00:00Z|Z9",
            "OLD:name": "Old name",
            "KEPT:r": "4000",
            "KEPT:n": "5",
            "KEPT:k": "2025-11-01T00:00:00Z|K1",
            "KEPT:name": "Kept",
            "BARE:n": "1",  # a SKU whose lines never had a name, and a revenue field lost
        },
    )
    date = "2025-11-10T00:00:00Z"
    orders = [
        # Older than OLD's latest key: its name stays; NEW gets a card of its own.
        Order("A1", 5, "Pat", "USD", date, [Line("OLD", "Newer name", 2, 50)]),
        Order("A2", 5, "Pat", "USD", date, [Line("NEW", "", 1, 30), Line("BARE", "", 1, 5)]),
    ]
    put_orders(r, orders, {})
    complete_and_register(redis_url, tmp_path, orders, [2], {})
    assert r.hgetall(info) == {
        "OLD": "800|4|2025-11-20T00:00:00Z|Z9|Old name",
        "NEW": "30|1|||",
        "BARE": "5|2|||",
        "KEPT:r": "4000",
        "KEPT:n": "5",
        "KEPT:k": "2025-11-01T00:00:00Z|K1",
        "KEPT:name": "Kept",
    }

    async def top() -> list[ProductEntry]:
        client = async_client(redis_url)
        try:
            return await top_products(client, KEYS, "USD", 10)
        finally:
            await client.aclose()

    assert asyncio.run(top()) == [
        ProductEntry(1, "KEPT", "Kept", 40, 4000, 5),
        ProductEntry(2, "OLD", "Old name", 9, 800, 4),
        ProductEntry(3, "BARE", "", 2, 5, 2),
        ProductEntry(4, "NEW", "", 1, 30, 1),
    ]


def test_a_product_revenue_past_2_to_the_53_stays_exact(
    redis_url: str, r: redis.Redis, tmp_path: Path
) -> None:
    info = KEYS.leaderboard("EUR", "product_info")
    near = 2**53 - 3
    r.hset(info, "BIG", f"{near}|1|||")
    r.hset(info, "HUGE", f"{10**30 - 1}|1|||")
    date = "2025-11-10T00:00:00Z"
    orders = [
        Order("B1", 5, "Pat", "EUR", date, [Line("BIG", "Big", 1, 999), Line("HUGE", "", 1, 1)]),
        Order("B2", 5, "Pat", "EUR", date, [Line("BIG", "", 3, 7)]),
    ]
    put_orders(r, orders, {})
    complete_and_register(redis_url, tmp_path, orders, [1, 1], {})
    assert r.hget(info, "BIG") == f"{near + 999 + 21}|3|{date}|B1|Big"
    assert r.hget(info, "HUGE") == f"{10**30}|2|||"
    assert read_product_card(r.hget(info, "HUGE")).revenue_cents == 10**30
