"""The stream transport of one stage: read, reclaim and commit messages of its consumer group.

Handlers never see this module's calls; the run loop reads with it and commits the handlers'
decisions through commit.lua (transition + next XADD + XACK in one atomic step).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import redis
import redis.asyncio as aredis
from redis.exceptions import ResponseError

from streamproc.clock import now_ms, utc_day
from streamproc.errors import ServerError
from streamproc.groups import create_groups, group_specs
from streamproc.keys import Keys, record_bucket
from streamproc.lua import AsyncScripts
from streamproc.models import (
    COMPLETED,
    TERMINAL_STATES,
    Order,
    decode_order,
    encode_order,
    order_decoder,
)
from streamproc.replies import id_key, text
from streamproc.workflow import FACTS_STAGE, TRANSITIONS, outputs_of

log = logging.getLogger("streamproc.transport")

_decode_order = order_decoder()


@dataclass(slots=True)
class Message:
    """One stream entry of a stage, decoded; `error` is set when its payload is unusable."""

    msg_id: bytes
    order_id: str
    attempt: int
    state: str
    order: Order | None
    error: str = ""
    deliveries: int = 1
    # The order reached a terminal state before this one (entry field r=1, set on terminal fan-out).
    prior: bool = False
    # The order's creation ms (entry field c; 0 in entries written before it was carried).
    created_ms: int = 0
    # A completion the leaderboards have not counted yet (entry field b=1, facts stream only):
    # the snapshot stage adds it when it registers it. Earlier versions counted it at commit.
    boards_pending: bool = False
    # The one stage this entry is for (field for), on a stream another stage's group reads as
    # well: a dead letter of the snapshot stage re-driven by `dlq retry`. "" = every reader.
    only: str = ""

    @property
    def reservation_key(self) -> str:
        """Idempotency key of this order attempt's stock reservation."""
        return f"{self.order_id}#{self.attempt}"

    @property
    def bucket(self) -> str:
        """Where the stock and the gateway keep this order's records (keys.record_bucket)."""
        return record_bucket(self.created_ms, self.order_id)


@dataclass(slots=True)
class Decision:
    """A handler's verdict on one message: an outcome of the workflow table and an optional note.

    An outcome of "" with an `error` means the message could not be settled: it is not committed
    (the run loop leaves it pending, or dead-letters it when `permanent`). Not frozen only because
    a frozen dataclass takes four times as long to build, once per message and stage; nothing
    changes a decision once made.
    """

    message: Message
    outcome: str
    note: str = ""
    error: str = ""
    permanent: bool = False

    @classmethod
    def failure(cls, message: Message, error: str, permanent: bool) -> Decision:
        """A message that could not be settled."""
        return cls(message, "", error=error, permanent=permanent)


@dataclass(slots=True)
class Committed:
    """What commit.lua did with a batch of decisions."""

    # Per decision: 1 applied, 0 stale (acked only), -1 order missing (not acked).
    results: list[int]
    # The applied transitions to a terminal state: (state, ms since the order was submitted or
    # -1 when unknown, the order), for the end-to-end latency and revenue metrics.
    finished: list[tuple[str, int, Order | None]]


def parse_entry(msg_id: bytes, fields: dict[bytes, bytes] | list[bytes]) -> Message:
    """Decode a raw stream entry (a dict, or the flat field/value list the server sends); never
    raises (a bad entry carries `error`)."""
    if isinstance(fields, list):
        n = len(fields)
        if (
            (n == 10 or (n == 12 and fields[10] == b"b"))
            and fields[0] == b"o"
            and fields[8] == b"c"
            and fields[2] == b"a"
        ):
            # The layout every script writes: o, a, s, d, c, and b=1 on a completion's entry in
            # the facts stream. Once per message and stage, so the decoder is called without
            # decode_order's wrapper.
            try:
                order = _decode_order(fields[7])
                return Message(
                    msg_id,
                    fields[1].decode() or order.order_id,
                    int(fields[3]),
                    fields[5].decode(),
                    order,
                    created_ms=int(fields[9]),
                    boards_pending=n == 12 and fields[11] == b"1",
                )
            except (ValueError, msgspec.DecodeError, msgspec.ValidationError):
                pass  # the slow path below says what is wrong
        fields = dict(zip(fields[0::2], fields[1::2], strict=False))
    order_id = fields.get(b"o", b"").decode("utf-8", "replace")
    only = fields.get(b"for", b"").decode("ascii", "replace")
    try:
        attempt = int(fields.get(b"a", b"1"))
        created_ms = int(fields.get(b"c", b"0"))
        order = decode_order(fields[b"d"])
    except (KeyError, ValueError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        error = f"undecodable entry: {exc}"
        pending = fields.get(b"b") == b"1"
        return Message(msg_id, order_id, 1, "", None, error, boards_pending=pending, only=only)
    state = fields.get(b"s", b"").decode("ascii", "replace")
    return Message(
        msg_id,
        order_id or order.order_id,
        attempt,
        state,
        order,
        prior=fields.get(b"r") == b"1",
        created_ms=created_ms,
        boards_pending=fields.get(b"b") == b"1",
        only=only,
    )


# Entries one XTRIM call may remove (the server's default for an approximate trim, made explicit),
# and calls per trim: up to a million entries a trim, each call a short step of its own.
TRIM_STEP = 10_000
TRIM_CALLS = 100


async def ensure_groups(client: aredis.Redis, keys: Keys) -> None:
    """Create every stage stream and its group(s) when missing."""
    for stream, group, start in group_specs(keys):
        try:
            await client.xgroup_create(stream, group, id=start, mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise


def ensure_groups_sync(client: redis.Redis, keys: Keys) -> None:
    """ensure_groups for the blocking client."""
    create_groups(client.execute_command, keys)


class StageStream:
    """Consumer-group access to one stream a stage reads (Keys.sources), for one named consumer."""

    def __init__(
        self,
        client: aredis.Redis,
        scripts: AsyncScripts,
        keys: Keys,
        stage: str,
        consumer: str,
        stream: str | None = None,
    ) -> None:
        self.client = client
        self.scripts = scripts
        self.keys = keys
        self.stage = stage
        self.consumer = consumer
        self.stream = stream or keys.sources(stage)[0]
        # Another stage's stream (notify on the facts stream): the only kind where an entry can be
        # meant for another reader (Message.only), since `dlq retry` marks those on a stage's own.
        self.foreign = self.stream != keys.stream(stage)
        self.group = keys.group(stage)
        self._outputs = outputs_of(stage)
        self._output_keys = [keys.stream(s) for s in self._outputs]
        self._order_prefix = keys.order("")
        # This stage's transitions as commit.lua takes them (to_state, next stage, outputs), and
        # per outcome: its 1-based number there and whether the order completes (its revenue is
        # counted). Completions enqueued for the snapshot stage are marked for its leaderboards.
        mine = [(o, t) for (source, o), t in TRANSITIONS.items() if source == stage]
        facts = self._outputs.index(FACTS_STAGE) + 1 if FACTS_STAGE in self._outputs else 0
        self._transitions: list[Any] = [len(self._outputs), facts, len(mine)]
        self._plan: dict[str, tuple[int, bool]] = {}
        # Outcomes that end the workflow, and the terminal state each one sets.
        self._terminal = {o: t.to_state for o, t in mine if t.to_state in TERMINAL_STATES}
        # Outcomes that only ack (notify): a batch of nothing else is one XACK, no script.
        self._ack_only = {o for o, t in mine if not t.to_state}
        for number, (outcome, t) in enumerate(mine, start=1):
            outputs = "".join(str(self._outputs.index(o) + 1) for o in t.outputs)
            self._transitions += (t.to_state, t.next_stage, outputs)
            self._plan[outcome] = (number, t.to_state == COMPLETED)
        # Stream entries are parsed here from the server's flat reply (no per-entry dict).
        client.set_response_callback("XREADGROUP", _raw_reply)

    async def read(self, count: int, block_ms: int | None) -> list[Message]:
        """New entries for this consumer, waiting up to block_ms for some to arrive."""
        return await self._read_group(">", count, block_ms)

    async def read_raw(self, count: int, block_ms: int | None) -> list[tuple[bytes, Any]]:
        """New entries as the server sent them: (id, flat field list) pairs, nothing decoded."""
        return await self._read_entries(">", count, block_ms)

    async def read_pending(self, count: int, after: bytes = b"0") -> list[Message]:
        """This consumer's own unacked entries with ids above `after` (after a restart)."""
        return await self._read_group(after, count, None)

    async def _read_group(
        self, start: str | bytes, count: int, block_ms: int | None
    ) -> list[Message]:
        entries = await self._read_entries(start, count, block_ms)
        # An entry without fields was trimmed while pending: nothing left to handle.
        return [parse_entry(msg_id, fields) for msg_id, fields in entries if fields]

    async def _read_entries(
        self, start: str | bytes, count: int, block_ms: int | None
    ) -> list[tuple[bytes, Any]]:
        reply = await self._xreadgroup(start, count, block_ms)
        if not reply:
            return []
        if reply.__class__ is dict:  # RESP3: {stream: [entries]}
            reply = list(reply.items())
        return [(msg_id, fields) for _stream, entries in reply for msg_id, fields in entries]

    async def _xreadgroup(self, start: str | bytes, count: int, block_ms: int | None) -> Any:
        """XREADGROUP of this consumer on this stream, its reply as the server sent it.

        Sent as a plain command, not through redis-py's xreadgroup(), which re-checks its
        arguments and wraps every call in a coroutine of its own (stream lag for OpenTelemetry,
        which streamproc does not use): this is every stage's most frequent command.
        """
        block = () if block_ms is None else ("BLOCK", block_ms)
        try:
            return await self.client.execute_command(  # type: ignore[no-untyped-call]
                "XREADGROUP",
                "GROUP",
                self.group,
                self.consumer,
                "COUNT",
                count,
                *block,
                "STREAMS",
                self.stream,
                start,
            )
        except ResponseError as exc:
            _raise_if_lost(exc, self.stream)
            raise

    async def delivery_counts(self, messages: Sequence[Message]) -> None:
        """Set each message's server-side delivery counter (XPENDING; reads do not carry it)."""
        if not messages:
            return
        ids = sorted((m.msg_id for m in messages), key=id_key)
        rows = await self.client.xpending_range(
            self.stream,
            self.group,
            min=ids[0],
            max=ids[-1],
            count=len(ids) * 4 + 100,
            consumername=self.consumer,
        )
        counts = {row["message_id"]: int(row["times_delivered"]) for row in rows}
        for message in messages:
            message.deliveries = counts.get(message.msg_id, message.deliveries)

    async def dead_letter(self, message: Message, error: str) -> tuple[bytes, int]:
        """Move one message to the dead-letter stream and ack it, atomically; returns the dead
        letter's id and, when its order became dead_lettered here, the ms since the order was
        submitted (else -1)."""
        now = now_ms()
        keys = [
            self.stream,
            self.keys.dead_letters,
            self.keys.state_counts,
            self.keys.order(message.order_id),
            self.keys.stream(FACTS_STAGE),
            self.keys.day(utc_day(now)),
            self.keys.throughput(now // 1000),
        ]
        payload = b"" if message.order is None else encode_order(message.order)
        args = [
            self.group,
            message.msg_id,
            self.stage,
            message.deliveries,
            error[:1000],
            message.order_id,
            message.attempt,
            payload,
            now,
            message.state,
            "1" if message.boards_pending else "",
        ]
        try:
            dead_id, elapsed_ms = await self.scripts.run("dead_letter", keys, args)
        except ResponseError as exc:
            _raise_if_lost(exc, self.stream)
            raise
        dead_id = dead_id if isinstance(dead_id, bytes) else str(dead_id).encode()
        return dead_id, int(elapsed_ms)

    async def trim(self, forget_consumers_idle_ms: int) -> int:
        """Trim entries every reader is done with; forget long-idle consumers owning nothing.

        The floor is the lowest of each group's last-delivered id and oldest pending id, so an
        entry still pending or not yet delivered in any group is never deleted. Returns entries
        removed.
        """
        try:
            groups = await self.client.xinfo_groups(self.stream)
        except ResponseError as exc:
            _raise_if_lost(exc, self.stream)
            raise
        if not any(text(g["name"]) == self.group for g in groups):
            raise ServerError(f"consumer group of {self.stream} is missing: the server lost data")
        # Every group's floor: the facts stream has two readers, and either may be behind.
        floors = []
        for group in groups:
            floor = text(group["last-delivered-id"])
            if int(group["pending"]):
                summary = await self.client.xpending(self.stream, text(group["name"]))
                if summary.get("min") is not None:
                    floor = min(floor, text(summary["min"]), key=id_key)
            floors.append(floor)
        floor = min(floors, key=id_key)
        # An approximate XTRIM removes at most 100 nodes' worth of entries (10,000 by default) per
        # call: once a second that fell behind a stream taking more than 10,000 entries a second
        # (the facts stream kept 25,000-30,000 after a 10,500 orders/s flood). Again until done.
        removed = 0
        for _ in range(TRIM_CALLS):
            step = int(
                await self.client.xtrim(self.stream, minid=floor, approximate=True, limit=TRIM_STEP)
            )
            removed += step
            if step == 0:
                break
        for consumer in await self.client.xinfo_consumers(self.stream, self.group):
            name = text(consumer["name"])
            idle = int(consumer["idle"])
            if (
                name != self.consumer
                and not int(consumer["pending"])
                and (idle > forget_consumers_idle_ms)
            ):
                await self.client.xgroup_delconsumer(self.stream, self.group, name)
        return removed

    async def claim_idle(
        self, min_idle_ms: int, count: int, start: bytes = b"0-0"
    ) -> tuple[bytes, list[Message]]:
        """Take over entries left idle (by other consumers, or by this one before a restart);
        returns (next cursor, messages)."""
        try:
            reply = await self.client.xautoclaim(
                self.stream, self.group, self.consumer, min_idle_ms, start_id=start, count=count
            )
        except ResponseError as exc:
            _raise_if_lost(exc, self.stream)
            raise
        cursor, entries = reply[0], reply[1]
        deleted = reply[2] if len(reply) > 2 else []
        if deleted:
            # Only an outside XDEL/XTRIM can do this (our trimming keeps pending entries).
            log.error(
                "%s: %d pending entries were deleted by someone else: %s",
                self.stage,
                len(deleted),
                b", ".join(deleted[:10]).decode(),
            )
        return cursor, [parse_entry(mid, f) for mid, f in entries if f is not None]

    async def keep(self, ids: Sequence[bytes], min_idle_ms: int) -> int:
        """Reset the idle time of entries this consumer is still working on, so no reclaimer
        takes an entry that is slow rather than abandoned; how many were kept.

        XCLAIM JUSTID counts no delivery. Only entries idle for min_idle_ms are touched: one a
        peer has just reclaimed (a stalled consumer's) has been idle for less and is left to it.
        """
        try:
            kept = await self.client.xclaim(
                self.stream, self.group, self.consumer, min_idle_ms, list(ids), justid=True
            )
        except ResponseError as exc:
            _raise_if_lost(exc, self.stream)
            raise
        return len(kept)

    async def ack(self, messages: Sequence[Message]) -> None:
        """Ack messages without handling them (entries for another stage: Message.only)."""
        if messages:
            await self.client.xack(self.stream, self.group, *(m.msg_id for m in messages))

    async def commit(self, decisions: Sequence[Decision]) -> Committed:
        """Apply transitions, enqueue next stages and ack, in one atomic script call."""
        if not decisions:
            return Committed([], [])
        if all(d.outcome in self._ack_only for d in decisions):
            # What commit.lua does for ack-only items, in one command.
            await self.client.xack(self.stream, self.group, *(d.message.msg_id for d in decisions))
            return Committed([1] * len(decisions), [])
        now = now_ms()
        keys = [
            self.stream,
            self.keys.state_counts,
            *self._output_keys,
            self.keys.day(utc_day(now)),
            self.keys.throughput(now // 1000),
        ]
        args: list[Any] = [self.group, self.stage, now, len(decisions), *self._transitions]
        plan, prefix = self._plan, self._order_prefix
        for d in decisions:
            transition, completes = plan[d.outcome]
            msg = d.message
            keys.append(prefix + msg.order_id)
            args += (
                msg.msg_id,
                msg.order_id,
                msg.attempt,
                transition,
                d.note,
                _revenue(msg) if completes else "",
            )
        try:
            result = await self.scripts.run("commit", keys, args)
        except ResponseError as exc:
            _raise_if_lost(exc, self.stream)
            raise
        n = len(decisions)
        results = [int(x) for x in result[:n]]
        if len(result) == n:
            return Committed(results, [])
        # The latencies follow the results, one per applied terminal transition, in item order.
        elapsed = iter(result[n:])
        terminal = self._terminal
        finished = [
            (terminal[d.outcome], int(next(elapsed)), d.message.order)
            for d, applied in zip(decisions, results, strict=True)
            if applied == 1 and d.outcome in terminal
        ]
        return Committed(results, finished)

    async def uncount_delivery(self, messages: Sequence[Message]) -> None:
        """Leave these entries pending without spending their delivery budget.

        For entries a handler could not start yet (another consumer holds their lease): the
        delivery that brought them is taken back (XCLAIM RETRYCOUNT), so waiting for a crashed
        holder's lease to expire never dead-letters them.
        """
        for message in messages:
            await self.client.xclaim(
                self.stream,
                self.group,
                self.consumer,
                0,
                [message.msg_id],
                retrycount=max(0, message.deliveries - 1),
                justid=True,
            )


def _revenue(message: Message) -> str:
    """`<currency>:<cents>` of a completed order, for the day's revenue counter."""
    order = message.order
    return f"{order.currency}:{order.total_cents}" if order is not None else ""


def _raw_reply(response: Any, **options: Any) -> Any:
    """XREADGROUP's reply as the server sent it: [[stream, [[id, [field, value, …]], …]]]."""
    return response


def _raise_if_lost(exc: ResponseError, stream: str) -> None:
    """Turn a reply saying the stream or group is gone into a ServerError (the server lost data).

    NOGROUP: the stream or group is gone. UNBLOCKED: it was deleted while we were blocked in
    XREADGROUP (FLUSHALL, DEL), which is where an idle consumer usually is. Any other error is
    left for the caller to re-raise as it is.
    """
    if "NOGROUP" in str(exc) or str(exc).startswith("UNBLOCKED"):
        raise ServerError(
            f"consumer group of {stream} is missing: the server lost its data "
            "(refusing to re-create it and skip work)"
        ) from exc
