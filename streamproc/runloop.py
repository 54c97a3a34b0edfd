"""The run loop of one stage: batched reads, bounded concurrency, reclaim, back-off and drain.

It knows nothing of what a stage does: it hands batches of decoded messages to a handler and
commits the decisions it returns. Everything the handler leaves undecided stays pending and is
delivered again later (reclaimed after `claim_idle_ms`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from typing import Protocol

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from streamproc.errors import RetryableError, ServerError
from streamproc.transport import Decision, Message, StageStream

log = logging.getLogger("streamproc.runloop")

TRANSIENT = (RetryableError, RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)


class Handler(Protocol):
    """A stage's business logic: a batch of messages in, one decision per settled message out."""

    stage: str

    async def handle(self, batch: list[Message]) -> list[Decision]:
        """Decide each message; effects must be idempotent per order attempt."""
        ...


class Backoff:
    """Growing, capped delay between failed attempts; reset by a success."""

    def __init__(self, first_s: float = 0.05, cap_s: float = 5.0) -> None:
        self.first_s = first_s
        self.cap_s = cap_s
        self.delay_s = 0.0

    def next(self) -> float:
        """The delay to sleep before the next attempt."""
        self.delay_s = min(self.cap_s, self.delay_s * 2 if self.delay_s else self.first_s)
        return self.delay_s

    def reset(self) -> None:
        """Called after a success."""
        self.delay_s = 0.0


class RunLoop:
    """Drives one stage for one consumer until asked to stop."""

    def __init__(
        self,
        stream: StageStream,
        handler: Handler,
        *,
        concurrency: int,
        batch_size: int,
        block_ms: int,
        claim_idle_ms: int,
    ) -> None:
        self.stream = stream
        self.handler = handler
        self.concurrency = max(1, concurrency)
        self.batch_size = max(1, batch_size)
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.in_flight = 0
        self.peak_in_flight = 0
        self.outcomes: Counter[str] = Counter()
        self.fatal: BaseException | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # Ids being handled here: the reclaimer must not hand an entry that is merely slow (idle
        # longer than claim_idle_ms while in flight) to this same loop a second time.
        self._in_flight_ids: set[bytes] = set()
        self._capacity = asyncio.Event()
        self._capacity.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Read and process until `stop` is set, then let in-flight batches finish."""
        reclaimer = asyncio.create_task(self._reclaim_forever(stop))
        try:
            await self._drain_own_pending()
            await self._read_forever(stop)
        finally:
            reclaimer.cancel()
            await asyncio.gather(reclaimer, return_exceptions=True)
            await self.wait_idle()

    async def wait_idle(self) -> None:
        """Wait for every in-flight batch to finish."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _drain_own_pending(self) -> None:
        # Entries this consumer name read before a restart are still ours: finish them first.
        # A cursor (not "0" again) so entries whose processing fails are not re-read in a loop.
        cursor = b"0"
        while batch := await self.stream.read_pending(self.batch_size, cursor):
            cursor = batch[-1].msg_id
            await self._process(batch)

    async def _read_forever(self, stop: asyncio.Event) -> None:
        backoff = Backoff()
        while not stop.is_set() and self.fatal is None:
            if self.in_flight >= self.concurrency:
                self._capacity.clear()
                await self._wait_capacity(stop)
                continue
            count = min(self.batch_size, self.concurrency - self.in_flight)
            try:
                batch = await self.stream.read(count, self.block_ms)
            except ServerError as exc:
                self.fatal = exc
                break
            except TRANSIENT as exc:
                delay = backoff.next()
                log.warning(
                    "%s: read failed (%s); retrying in %.2fs", self.stream.stage, exc, delay
                )
                await _sleep_or_stop(stop, delay)
                continue
            backoff.reset()
            if batch:
                self._spawn(batch)

    async def _reclaim_forever(self, stop: asyncio.Event) -> None:
        period_s = max(0.05, self.claim_idle_ms / 2000)
        cursor = b"0-0"
        while not stop.is_set():
            await _sleep_or_stop(stop, period_s)
            if stop.is_set() or self.in_flight >= self.concurrency:
                continue
            try:
                cursor, batch = await self.stream.claim_idle(
                    self.claim_idle_ms,
                    min(self.batch_size, self.concurrency - self.in_flight),
                    cursor,
                )
            except ServerError as exc:
                self.fatal = exc
                stop.set()
                return
            except TRANSIENT as exc:
                log.warning("%s: reclaim failed (%s)", self.stream.stage, exc)
                continue
            if batch:
                log.info("%s: reclaimed %d idle entries", self.stream.stage, len(batch))
                self._spawn(batch)

    async def _wait_capacity(self, stop: asyncio.Event) -> None:
        waiter = asyncio.create_task(self._capacity.wait())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        stopper.cancel()

    def _spawn(self, batch: list[Message]) -> None:
        batch = [m for m in batch if m.msg_id not in self._in_flight_ids]
        if not batch:
            return
        self._in_flight_ids.update(m.msg_id for m in batch)
        self.in_flight += len(batch)
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        task = asyncio.create_task(self._process_and_release(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _process_and_release(self, batch: list[Message]) -> None:
        try:
            await self._process(batch)
        finally:
            self.in_flight -= len(batch)
            self._in_flight_ids.difference_update(m.msg_id for m in batch)
            self._capacity.set()

    async def _process(self, batch: list[Message]) -> None:
        stage = self.stream.stage
        good = [m for m in batch if m.order is not None]
        for bad in batch:
            if bad.order is None:
                # Left pending: the dead-letter path takes it once its delivery budget is spent.
                log.error("%s: entry %s unusable: %s", stage, bad.msg_id.decode(), bad.error)
                self.outcomes["error"] += 1
        if not good:
            return
        try:
            decided = await self.handler.handle(good)
            decisions = [d for d in decided if d.outcome]
            for failed in decided:
                if not failed.outcome:
                    log.error(
                        "%s: order %s not settled: %s", stage, failed.message.order_id, failed.error
                    )
                    self.outcomes["error"] += 1
            results = await self.stream.commit(decisions)
        except ServerError as exc:
            self.fatal = exc
            return
        except TRANSIENT as exc:
            log.warning("%s: batch of %d left pending (%s)", stage, len(good), exc)
            self.outcomes["retry"] += len(good)
            return
        except Exception:
            log.exception("%s: handler failed on a batch of %d; left pending", stage, len(good))
            self.outcomes["error"] += len(good)
            return
        for decision, result in zip(decisions, results, strict=True):
            if result == -1:
                log.error(
                    "%s: order %s is missing; entry left pending", stage, decision.message.order_id
                )
                self.outcomes["missing"] += 1
            else:
                self.outcomes[decision.outcome if result == 1 else "stale"] += 1


async def _sleep_or_stop(stop: asyncio.Event, delay_s: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=delay_s)
