"""Notify and the snapshot stage read one stream of finished orders, each with its own group.

Each finished order is one entry on the facts stream. These tests cover what sharing it changes:
an upgrade from versions that enqueued every finished order on notify's stream as well, and a
dead letter of the snapshot stage re-driven onto the shared stream (for the snapshot stage only).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from streamproc.connection import async_client
from streamproc.context import StageContext
from streamproc.models import Line, Order, encode_order
from streamproc.runloop import RunLoop
from streamproc.settings import Settings
from streamproc.stages import load_handler
from streamproc.transport import StageStream, ensure_groups_sync, parse_entry
from tests.earlier_version import finish_as_an_earlier_version
from tests.helpers import stop_procs
from tests.invariants import assert_store_holds_each_once, dead_letters
from tests.support import (
    KEYS,
    Fleet,
    cli,
    notification_lines,
    one_line,
    raw_boards,
    running_fleet,
    write_orders,
)

FACTS = KEYS.stream("snapshot")


@pytest.fixture
def env(sp_env: dict[str, str]) -> dict[str, str]:
    return dict(sp_env, STREAMPROC_PAYMENT_SUCCESS_RATE="1.0", STREAMPROC_BLOCK_MS="100")


@pytest.fixture
def pipeline(env: dict[str, str], tmp_path: Path) -> Iterator[Fleet]:
    with running_fleet(env, tmp_path) as fleet:
        yield fleet


def ingest(env: dict[str, str], tmp_path: Path, prefix: str, count: int) -> list[str]:
    """`count` one-line orders of SKU-F (the 1.0 success rate completes them all)."""
    ids = [f"{prefix}{n:03d}" for n in range(count)]
    path = write_orders(tmp_path / f"{prefix}.csv", [one_line(i, "SKU-F", 1) for i in ids])
    assert json.loads(cli(["ingest", str(path), "--json"], env).stdout)["imported"] == count
    return ids


def test_an_upgrade_notifies_what_earlier_versions_enqueued_once(
    env: dict[str, str], pipeline: Fleet, r: redis.Redis, tmp_path: Path
) -> None:
    cli(["stock", "set", "SKU-F", "1000"], env)
    earlier = ingest(env, tmp_path, "E", 30)
    r.xgroup_destroy(FACTS, KEYS.group("notify"))  # that version never created it
    finish_as_an_earlier_version(Settings.from_env(env))
    assert r.xlen(KEYS.stream("notify")) == r.xlen(FACTS) == 30
    # The group this version adds starts after them: notify gets them from its own stream.
    ensure_groups_sync(r, KEYS)
    (group,) = (g for g in r.xinfo_groups(FACTS) if g["name"] == KEYS.group("notify"))
    ((last_id, _),) = r.xrevrange(FACTS, count=1)
    assert (group["last-delivered-id"], group["lag"]) == (last_id, 0)

    pipeline.start("all")
    pipeline.wait_registered("snapshot", 1)
    later = ingest(env, tmp_path, "L", 20)  # through this version: the facts stream only
    pipeline.drain(30)

    # Each order notified once: the earlier ones from notify's own stream (the group on the
    # facts stream starts after their entries), the later ones from the facts stream.
    per_order = Counter(line["order_reference"] for line in notification_lines(env))
    assert per_order == dict.fromkeys(earlier + later, 1)
    assert r.xinfo_stream(KEYS.stream("notify"))["entries-added"] == 30
    assert r.xinfo_stream(FACTS)["entries-added"] == 50
    for stream in KEYS.sources("notify"):
        (group,) = (g for g in r.xinfo_groups(stream) if g["name"] == KEYS.group("notify"))
        assert (group["pending"], group["lag"]) == (0, 0), stream
    assert_store_holds_each_once(r, env, dict.fromkeys(earlier + later, "completed"))


def test_a_retried_snapshot_dead_letter_is_for_the_snapshot_stage_only(
    env: dict[str, str], pipeline: Fleet, r: redis.Redis, tmp_path: Path
) -> None:
    """Re-driven onto the shared stream, it carries for=snapshot (notify acks it unread) and, a
    completion not yet on the leaderboards, b=1 again (the boards count it once registered)."""
    cli(["stock", "set", "SKU-F", "1000"], env)
    ids = ingest(env, tmp_path, "R", 3)
    pipeline.start("reserve")
    pipeline.start("payment")
    deadline = time.monotonic() + 30
    while r.hget(KEYS.state_counts, "completed") != "3":
        assert time.monotonic() < deadline, pipeline.logs()
        time.sleep(0.05)
    assert stop_procs(pipeline.procs) == [0, 0]
    pipeline.procs.clear()
    assert r.xlen(FACTS) == 3
    (junk_id,) = [r.xadd(FACTS, {"o": "junk-1", "a": "1", "d": "not-json"})]

    async def dead_letter_one_completion() -> None:
        client = async_client(env["STREAMPROC_REDIS_URL"])
        try:
            ctx = StageContext.build(Settings.from_env(env), client)
            stream = StageStream(client, ctx.scripts, KEYS, "snapshot", "test")
            ((msg_id, fields),) = await stream.read_raw(1, None)
            message = parse_entry(msg_id, fields)
            assert (message.state, message.boards_pending) == ("completed", True)
            await stream.dead_letter(message, "gave up after 5 deliveries: test")
        finally:
            await client.aclose()

    asyncio.run(dead_letter_one_completion())
    (letter,) = dead_letters(env)
    retried = cli(["dlq", "retry", letter["id"]], env)
    assert retried.stdout.strip() == "retried 1"
    *_, (retried_id, fields) = r.xrange(FACTS)
    assert retried_id != junk_id
    assert (fields["for"], fields["b"], fields["s"]) == ("snapshot", "1", "completed")

    pipeline.start("all")
    pipeline.drain(30)
    # Notify sent one notification per order, and acked the retried entry without a look. The
    # junk is the only thing either reader dead-lettered: once by each.
    per_order = Counter(line["order_reference"] for line in notification_lines(env))
    assert per_order == dict.fromkeys(ids, 1)
    letters = dead_letters(env)
    assert sorted(x["stage"] for x in letters) == ["notify", "snapshot"], letters
    assert {x["original_id"] for x in letters} == {junk_id}
    (group,) = (g for g in r.xinfo_groups(FACTS) if g["name"] == KEYS.group("notify"))
    assert (group["pending"], group["lag"]) == (0, 0)
    # The snapshot stage stored the retried completion and the leaderboards counted it: they are
    # what a rebuild from the store gives.
    boards = raw_boards(r)
    assert boards["currencies"] == {"USD"}
    rebuilt = json.loads(cli(["leaderboard", "rebuild", "--json"], env).stdout)
    assert rebuilt["customers"] == 1
    assert raw_boards(r) == boards
    assert_store_holds_each_once(r, env, dict.fromkeys(ids, "completed"))

    # A retried junk letter of the snapshot stage: the snapshot stage alone dead-letters it again.
    snapshot_junk = next(x for x in letters if x["stage"] == "snapshot")
    cli(["dlq", "retry", snapshot_junk["id"]], env)
    pipeline.start("all")
    pipeline.drain(30)
    after = Counter(x["stage"] for x in dead_letters(env))
    assert after == {"notify": 1, "snapshot": 1}, after


def test_an_entry_for_the_other_reader_is_acked_even_past_its_delivery_budget(
    redis_url: str, r: redis.Redis, tmp_path: Path
) -> None:
    """A for=snapshot entry that notify consumers kept dying on is acked when reclaimed, never
    dead-lettered for notify (a retry of that letter would have sent it to notify for real)."""
    ensure_groups_sync(r, KEYS)
    order = Order("O-1", 7, "Other", "USD", "2025-11-10T00:00:00Z", [Line("SKU-F", "", 1, 100)])
    entry_id = r.xadd(
        FACTS,
        {"o": "O-1", "a": "1", "s": "completed", "d": encode_order(order), "c": "0"}
        | {"for": "snapshot"},
    )
    group = KEYS.group("notify")
    r.xreadgroup(group, "died", {FACTS: ">"})
    r.xclaim(FACTS, group, "died", 0, [entry_id], retrycount=9)  # 9 deliveries spent
    settings = Settings(redis_url=redis_url, claim_idle_ms=100, notifications_log=tmp_path / "n")

    async def main() -> RunLoop:
        client = async_client(redis_url)
        try:
            ctx = StageContext.build(settings, client)
            stream = StageStream(client, ctx.scripts, KEYS, "notify", "reclaimer", FACTS)
            loop = RunLoop(
                stream,
                load_handler("notify", ctx),
                concurrency=10,
                batch_size=10,
                block_ms=50,
                claim_idle_ms=100,
                max_deliveries=3,
                trim=False,
            )
            stop = asyncio.Event()
            task = asyncio.create_task(loop.run(stop))
            async with asyncio.timeout(10):
                while (await client.xpending(FACTS, group))["pending"]:
                    await asyncio.sleep(0.05)
            stop.set()
            await task
            return loop
        finally:
            await client.aclose()

    loop = asyncio.run(main())
    assert loop.fatal is None
    assert r.xlen(KEYS.dead_letters) == 0
    assert not (tmp_path / "n").exists()  # nothing was sent
