"""The snapshot stage: append terminal orders from the facts stream to the store, exactly once.

Entries are gathered until `snapshot_max_rows` of them or `snapshot_interval_ms` have passed,
written as one Parquet file, and registered together with their acks (snapshot_register.lua);
the file's completions then go to the leaderboards a chunk at a time (lb_apply.lua), so the boards
follow the registered store.
A crash anywhere before registration leaves the entries pending (reclaimed and written again)
and at worst an unregistered file, which readers never see and housekeeping deletes. Small files
are merged in the background; replaced files are deleted after a grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection, Iterable
from typing import Any, cast

from streamproc.analytics.boardsums import CHUNK_ROWS, Pending, file_chunks, parse_pending
from streamproc.analytics.facts import on_boards, row_of_entry, row_of_message, seq_of
from streamproc.analytics.store import (
    TEMP_DIR,
    TRASH_GRACE_S,
    FactStore,
    FileInfo,
    Snapshot,
    encode_info,
    load_manifest,
)
from streamproc.clock import now_ms
from streamproc.context import StageContext
from streamproc.errors import ServerError
from streamproc.faults import die_now, fault_point
from streamproc.metrics import SNAPSHOTTED
from streamproc.models import COMPLETED
from streamproc.replies import id_key, text
from streamproc.runloop import TRANSIENT, Backoff, sleep_or_stop
from streamproc.transport import Message, StageStream, parse_entry

log = logging.getLogger("streamproc.snapshot")

READ_COUNT = 5_000
HOUSEKEEPING_S = 1.0
COMPACT_EVERY_S = 5.0
# Files below this many facts are merged once there are COMPACT_MIN_FILES of them, into files of
# up to COMPACT_TARGET_ROWS facts: few files keep queries fast, and a merge stays a few seconds.
COMPACT_SMALL_ROWS = 250_000
COMPACT_MIN_FILES = 8
COMPACT_TARGET_ROWS = 1_000_000
HELD_RETRY_S = 0.25
# After each leaderboard chunk, a pause this many times as long as the chunk took: a file's
# chunks sent back to back kept the server busy for tens of ms, and the orders in flight then
# waited (p99 latency at 5,000 orders/s 48 ms instead of 30). Paced, the boards take at most a
# third of the server while a file goes in, and are in well before the next file (1 s).
BOARD_PACE = 2.0


class SnapshotLoop:
    """Same interface as RunLoop (run, fatal, outcomes) for the snapshot stage."""

    def __init__(
        self, ctx: StageContext, stream: StageStream, store: FactStore, one_shot: bool = False
    ) -> None:
        self.ctx = ctx
        self.stream = stream
        self.store = store
        self.one_shot = one_shot
        settings = ctx.settings
        self.max_rows = settings.snapshot_max_rows
        # Entries wait in the buffer for up to the interval: well under the reclaim time, or a
        # peer would take over entries this live consumer is about to write.
        self.interval_s = min(settings.snapshot_interval_ms, settings.claim_idle_ms // 3) / 1000
        self.claim_idle_ms = settings.claim_idle_ms
        self.max_deliveries = settings.max_deliveries
        self.block_ms = settings.block_ms
        self.fatal: ServerError | None = None
        self.outcomes: dict[str, int] = {"facts": 0, "files": 0, "dead_lettered": 0}
        # Entry id → its NDJSON row (facts.fact_row); the highest id names the file.
        self._buffer: dict[bytes, bytes] = {}
        # Ids of buffered completions an earlier version counted on the boards as it committed
        # them (facts.on_boards): registering their file must not count them again.
        self._on_boards: set[bytes] = set()
        # Files whose stalled leaderboard chunks cannot be summed again, as they were (said once
        # each; a rebuild drops their records).
        self._lost_boards: set[str] = set()
        self._fault = fault_point("snapshot")
        self._compaction: asyncio.Task[None] | None = None
        # The file being written and registered while the next batch is read (one at a time).
        self._flushing: asyncio.Task[None] | None = None
        self.metrics = ctx.metrics.stage("snapshot")
        # In flight here: the facts gathered and not yet registered (the file being written too).
        self._writing = 0
        self.metrics.watch_in_flight(lambda: len(self._buffer) + self._writing)

    async def run(self, stop: asyncio.Event) -> None:
        """Gather, write and register until `stop` (or, one-shot, until nothing is left)."""
        self.store.prepare()
        helper = None if self.one_shot else asyncio.create_task(self._housekeeping(stop))
        try:
            await self._take(await self._own_pending())
            await self._loop(stop)
        except ServerError as exc:
            self.fatal = exc
        finally:
            if helper is not None:
                helper.cancel()
                await asyncio.gather(helper, return_exceptions=True)
            for task in (self._flushing, self._compaction):
                if task is not None:
                    await asyncio.gather(task, return_exceptions=True)
        if self.one_shot and self.fatal is None:
            with contextlib.suppress(*TRANSIENT):
                await self._finish_stalled_boards()
            await self.compact()

    async def _loop(self, stop: asyncio.Event) -> None:
        backoff = Backoff()
        started = time.monotonic()
        last_reclaim = time.monotonic()
        while not stop.is_set():
            try:
                if time.monotonic() - last_reclaim > self.claim_idle_ms / 2000:
                    last_reclaim = time.monotonic()
                    await self._reclaim()
                full = len(self._buffer) >= self.max_rows
                # One-shot: files as big as allowed; the interval only bounds a live stage's lag.
                due = (
                    not self.one_shot
                    and self._buffer
                    and time.monotonic() - started >= self.interval_s
                )
                if full or due:
                    await self._flush(stop)
                    started = time.monotonic()
                    continue
                if self.one_shot:
                    got = await self.stream.read_raw(self._room(), None)
                    if not got:
                        await self._settle_flush()
                        if not self._buffer:
                            return
                        # Again until empty: a refused registration re-takes what is still ours.
                        await self._flush(stop)
                        continue
                else:
                    wait_s = self.interval_s - (time.monotonic() - started)
                    block = self.block_ms if not self._buffer else max(1, int(wait_s * 1000))
                    got = await self.stream.read_raw(self._room(), block)
                    if not self._buffer:
                        started = time.monotonic()
                await self._take_raw(got)
                backoff.reset()
            except TRANSIENT as exc:
                delay = backoff.next()
                log.warning("snapshot: %s; retrying in %.2fs", exc, delay)
                await sleep_or_stop(stop, delay)
        # Stopping: what is gathered is written now rather than reclaimed later.
        with contextlib.suppress(*TRANSIENT):
            await self._settle_flush()
            if self._buffer:
                await self._flush(stop)
                await self._settle_flush()

    def _room(self) -> int:
        return max(1, min(READ_COUNT, self.max_rows - len(self._buffer)))

    async def _own_pending(self) -> list[Message]:
        # Entries this consumer name read before (a restart, or a refused registration).
        found: list[Message] = []
        cursor = b"0"
        while batch := await self.stream.read_pending(READ_COUNT, cursor):
            cursor = batch[-1].msg_id
            found += batch
        return found

    async def _reclaim(self) -> None:
        cursor = b"0-0"
        while True:
            cursor, batch = await self.stream.claim_idle(self.claim_idle_ms, READ_COUNT, cursor)
            if batch:
                log.info("snapshot: reclaimed %d idle entries", len(batch))
                self.metrics.reclaimed.inc(len(batch))
                await self.stream.delivery_counts(batch)
                await self._take(batch)
            if cursor in (b"0-0", "0-0") or not batch:
                return

    async def _take_raw(self, entries: list[tuple[bytes, Any]]) -> None:
        buffer = self._buffer
        odd: list[Message] = []
        for msg_id, fields in entries:
            got = row_of_entry(msg_id, fields) if isinstance(fields, list) else None
            if got is None:
                odd.append(parse_entry(msg_id, fields or []))  # says what is wrong, or is fine
            else:
                buffer[msg_id] = got[0]
                if got[1]:
                    self._on_boards.add(msg_id)
        if odd:
            await self._take(odd)

    async def _take(self, messages: Iterable[Message]) -> None:
        for message in messages:
            if message.order is None:
                await self._dead_letter(message, message.error)
                continue
            try:
                row = row_of_message(message)
            except ValueError as exc:
                await self._dead_letter(message, str(exc))
                continue
            if message.deliveries > self.max_deliveries:
                # Not dead-lettered: a fact is only ever re-delivered because a writer died, and
                # one batch-mate cannot be told from another; sending them all to the dead-letter
                # stream would take them out of the KPIs. An operator should look, though.
                log.warning(
                    "snapshot: entry %s delivered %d times (writers keep dying?)",
                    text(message.msg_id),
                    message.deliveries,
                )
            self._buffer[message.msg_id] = row
            if on_boards(message.state == COMPLETED, message.boards_pending):
                self._on_boards.add(message.msg_id)

    async def _dead_letter(self, message: Message, error: str) -> None:
        log.error("snapshot: dead-lettering entry %s: %s", text(message.msg_id), error)
        await self.stream.dead_letter(message, error)
        self._buffer.pop(message.msg_id, None)
        self._on_boards.discard(message.msg_id)
        self.outcomes["dead_lettered"] += 1
        self.metrics.dead_letters.inc()

    async def _flush(self, stop: asyncio.Event) -> None:
        """Hand the buffer to a background write and start a new one: reading the next batch
        overlaps writing this one (DuckDB works in a thread, outside the GIL)."""
        await self._settle_flush()
        batch, self._buffer = self._buffer, {}
        counted, self._on_boards = self._on_boards, set()
        self._flushing = asyncio.create_task(self._write_and_register(batch, counted, stop))

    async def _settle_flush(self) -> None:
        """Wait for the write in flight; its error (if any) surfaces here."""
        if self._flushing is not None:
            task, self._flushing = self._flushing, None
            await task

    async def _write_and_register(
        self, batch: dict[bytes, bytes], counted: set[bytes], stop: asyncio.Event
    ) -> None:
        started = time.perf_counter()
        self._writing = len(batch)
        try:
            await self._write_batch(batch, counted, stop)
        except TRANSIENT:
            # Still pending and ours: back into the buffer for the next file.
            for msg_id, row in batch.items():
                self._buffer.setdefault(msg_id, row)
            self._on_boards |= counted
            raise
        finally:
            self._writing = 0
            self.metrics.processing.observe(time.perf_counter() - started)

    async def _write_batch(
        self, batch: dict[bytes, bytes], counted: set[bytes], stop: asyncio.Event
    ) -> None:
        ids = sorted(batch, key=id_key)  # in stream order: the fence reads their range
        last_id = text(ids[-1])
        on_half = die_now if self._fault == "mid_write" else None
        rows = list(batch.values())
        seqs = sorted(seq_of(msg_id) for msg_id in counted)
        name, info, chunks = await asyncio.to_thread(self._write_file, rows, last_id, seqs, on_half)
        if self._fault == "before_register":
            die_now()
        pending = Pending(0, len(chunks), CHUNK_ROWS, now_ms(), seqs) if chunks else None
        while True:
            status, version = await self._register(name, info, ids, pending)
            if status == "ok":
                self.outcomes["facts"] += len(ids)
                self.outcomes["files"] += 1
                self.metrics.settled({SNAPSHOTTED: len(ids)})
                log.info("snapshot: %s holds %d facts (version %s)", name, len(ids), version)
                try:
                    await self._add_to_boards(name, chunks, 0)
                except TRANSIENT as exc:
                    # Registered and acked: the entries must not be written again. The file's
                    # record stays, and housekeeping finishes its chunks once it looks stalled.
                    log.warning("snapshot: leaderboard chunks of %s interrupted (%s)", name, exc)
                return
            if status == "conflict" or stop.is_set():
                # Another consumer registered some of these first, or we are stopping while a
                # rebuild holds registration: drop the file; what is still ours is re-read.
                self.store.delete(name)
                if status == "conflict":
                    log.warning("snapshot: entries of %s were taken over; rewriting", name)
                    await self._take(await self._own_pending())
                return
            await asyncio.sleep(HELD_RETRY_S)  # held by a leaderboard rebuild

    def _write_file(
        self,
        rows: list[bytes],
        last_id: str,
        counted: list[int],
        on_half: Callable[[], None] | None,
    ) -> tuple[str, FileInfo, list[list[Any]]]:
        """Write the file, and sum its completions for the boards but the `counted` seqs
        (blocking)."""
        name, info = self.store.write_rows(rows, last_id, on_half)
        try:
            return name, info, file_chunks(str(self.store.root / name), counted, CHUNK_ROWS)
        except BaseException:
            self.store.delete(name)
            raise

    async def _add_to_boards(self, name: str, chunks: list[list[Any]], applied: int) -> None:
        """Add a registered file's chunks after the first `applied` to the boards, one
        lb_apply.lua call each; stop when another consumer or a rebuild has taken over."""
        # The fault point: half of the chunks in (rounded down), the rest never sent.
        dies_after = len(chunks) // 2 if self._fault == "mid_boards" and chunks else None
        for number in range(applied + 1, len(chunks) + 1):
            if number - 1 == dies_after:
                die_now()
            started = time.perf_counter()
            reply = await self._apply_chunk(name, number, chunks[number - 1])
            if text(reply[0]) != "ok":
                log.info("snapshot: leaderboard chunks of %s: %s", name, text(reply[0]))
                return
            if number < len(chunks):
                await asyncio.sleep(BOARD_PACE * (time.perf_counter() - started))
        if chunks:
            log.debug("snapshot: %s on the leaderboards (%d chunks)", name, len(chunks))

    async def _apply_chunk(self, name: str, number: int, rows: list[Any]) -> list[Any]:
        keys = self.ctx.keys
        reply = await self.ctx.scripts.run(
            "lb_apply",
            [keys.leaderboard_pending, keys.leaderboard_currencies()],
            [name, number, now_ms(), keys.leaderboard_prefix(), *rows],
        )
        if text(reply[0]) == "ok" and len(reply) > 1:
            log.error("snapshot: the leaderboards could not take %s: %s", name, text(reply[1]))
        return cast(list[Any], reply)

    async def _finish_stalled_boards(self) -> None:
        """Add the remaining chunks of files whose consumer stopped adding them (it died): their
        record has not moved for the reclaim time. The rows are summed again from the file."""
        client, keys = self.ctx.client, self.ctx.keys
        records = await client.hgetall(keys.leaderboard_pending)
        for raw_name, raw in records.items():
            name, pending = text(raw_name), parse_pending(text(raw))
            if pending is None or now_ms() - pending.at_ms < self.claim_idle_ms:
                continue
            path = self.store.root / name
            if not path.is_file():
                self._cannot_finish(name, "is gone before all its completions were on the boards")
                continue
            chunks = await asyncio.to_thread(
                file_chunks, str(path), pending.counted, pending.rows_per_chunk
            )
            if len(chunks) != pending.chunks:
                self._cannot_finish(name, f"now sums to {len(chunks)} chunks, not {pending.chunks}")
                continue
            log.warning(
                "snapshot: finishing the leaderboards of %s (%d of %d chunks were in)",
                name,
                pending.applied,
                pending.chunks,
            )
            await self._add_to_boards(name, chunks, pending.applied)

    def _cannot_finish(self, name: str, why: str) -> None:
        """Say (once per file) why its remaining chunks cannot be added."""
        if name not in self._lost_boards:
            self._lost_boards.add(name)
            log.error("snapshot: %s %s; run `streamproc leaderboard rebuild`", name, why)

    async def _register(
        self, name: str, info: FileInfo, ids: list[bytes], pending: Pending | None
    ) -> tuple[str, int]:
        keys = self.ctx.keys
        reply = await self.ctx.scripts.run(
            "snapshot_register",
            [
                self.stream.stream,
                keys.snapshot_files,
                keys.snapshot_version,
                keys.kpi_cache,
                keys.leaderboard_rebuild,
                keys.leaderboard_pending,
            ],
            [
                self.stream.group,
                self.stream.consumer,
                name,
                encode_info(info),
                pending.encode() if pending else "",
                *ids,
            ],
        )
        return text(reply[0]), int(reply[1])

    async def _housekeeping(self, stop: asyncio.Event) -> None:
        forget_ms = max(60_000, 4 * self.claim_idle_ms)
        last_compact = time.monotonic()
        while not stop.is_set():
            await sleep_or_stop(stop, HOUSEKEEPING_S)
            try:
                await self.stream.trim(forget_ms)
                await self._finish_stalled_boards()
                if time.monotonic() - last_compact >= COMPACT_EVERY_S:
                    last_compact = time.monotonic()
                    if self._compaction is None or self._compaction.done():
                        self._compaction = asyncio.create_task(self.compact())
            except ServerError as exc:
                self.fatal = exc
                stop.set()
                return
            except TRANSIENT as exc:
                log.debug("snapshot: housekeeping skipped (%s)", exc)

    async def compact(self) -> None:
        """Merge small files, then delete replaced files past their grace and old orphans."""
        try:
            snapshot = await load_manifest(self.ctx.client, self.ctx.keys)
            # Files still being added to the leaderboards stay as they are until they are in.
            adding = {
                text(n) for n in await self.ctx.client.hkeys(self.ctx.keys.leaderboard_pending)
            }
            for group in plan_compaction(snapshot, adding):
                await self._merge(snapshot, group)
            await self._collect_garbage()
        except TRANSIENT as exc:
            log.warning("snapshot: compaction skipped (%s)", exc)

    async def _merge(self, snapshot: Snapshot, names: list[str]) -> None:
        infos = [snapshot.files[n] for n in names]
        name, info = await asyncio.to_thread(self.store.merge, names, infos)
        keys = self.ctx.keys
        status = text(
            await self.ctx.scripts.run(
                "snapshot_compact",
                [
                    keys.snapshot_files,
                    keys.snapshot_trash,
                    keys.leaderboard_rebuild,
                    keys.leaderboard_pending,
                ],
                [name, encode_info(info), now_ms(), *names],
            )
        )
        if status != "ok":
            self.store.delete(name)
            return
        log.info("snapshot: merged %d files (%d facts) into %s", len(names), info.rows, name)

    async def _collect_garbage(self) -> None:
        client, keys = self.ctx.client, self.ctx.keys
        cutoff = now_ms() - int(TRASH_GRACE_S * 1000)
        for raw in await client.zrangebyscore(keys.snapshot_trash, "-inf", cutoff):
            name = text(raw)
            self.store.delete(name)
            await client.zrem(keys.snapshot_trash, name)
        known = set((await load_manifest(self.ctx.client, self.ctx.keys)).files)
        known.update(text(n) for n in await client.zrange(keys.snapshot_trash, 0, -1))
        for rel in self.store.orphans(known):
            log.warning("snapshot: removing unregistered file %s", rel)
            path = self.store.root / rel
            if rel.startswith(TEMP_DIR + "/") or rel.startswith("facts-"):
                path.unlink(missing_ok=True)


def plan_compaction(snapshot: Snapshot, leave: Collection[str] = ()) -> list[list[str]]:
    """Groups of small files to merge (oldest first), each up to COMPACT_TARGET_ROWS facts; the
    files in `leave` are left out."""
    small = sorted(
        n for n, i in snapshot.files.items() if i.rows < COMPACT_SMALL_ROWS and n not in leave
    )
    if len(small) < COMPACT_MIN_FILES:
        return []
    groups: list[list[str]] = [[]]
    rows = 0
    for name in small:
        size = snapshot.files[name].rows
        if groups[-1] and rows + size > COMPACT_TARGET_ROWS:
            groups.append([])
            rows = 0
        groups[-1].append(name)
        rows += size
    return [g for g in groups if len(g) > 1]
