"""The run loop of one stage: batched reads, bounded concurrency, reclaim, back-off, dead letters,
trimming and drain.

It knows nothing of what a stage does: it hands batches of decoded messages to a handler and
commits the decisions it returns. A message that fails transiently stays pending and is delivered
again (reclaimed after `claim_idle_ms`, then retried after a growing delay); one that fails
permanently, or has used up `max_deliveries` by the server's own counter, is dead-lettered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from typing import Protocol

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from streamproc.errors import PermanentError, RetryableError, ServerError
from streamproc.faults import InjectedFault, die_now, fault_point, poison_order
from streamproc.metrics import ConsumerMetrics, StageMetrics
from streamproc.models import DEAD_LETTERED
from streamproc.transport import Decision, Message, StageStream

log = logging.getLogger("streamproc.runloop")

TRANSIENT = (RetryableError, RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)
RETRY_BASE_S = 0.1
RETRY_CAP_S = 10.0
TRIM_INTERVAL_S = 1.0
LAST_ERRORS_KEPT = 10_000


class Handler(Protocol):
    """A stage's business logic: a batch of messages in, one decision per message out."""

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


def retry_delay_s(deliveries: int) -> float:
    """Extra wait before handling a re-delivered message: 0.1 s, 0.2 s, 0.4 s … capped."""
    if deliveries <= 1:
        return 0.0
    return float(min(RETRY_CAP_S, RETRY_BASE_S * 2 ** (deliveries - 2)))


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
        max_deliveries: int = 5,
        trim: bool = True,
        metrics: StageMetrics | None = None,
    ) -> None:
        self.stream = stream
        self.handler = handler
        self.concurrency = max(1, concurrency)
        self.batch_size = max(1, batch_size)
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.max_deliveries = max_deliveries
        self.trim_enabled = trim
        self.in_flight = 0
        self.peak_in_flight = 0
        self.outcomes: Counter[str] = Counter()
        self.metrics = metrics or ConsumerMetrics().stage(stream.stage)
        self.metrics.watch_in_flight(lambda: self.in_flight)
        self.fatal: BaseException | None = None
        self._fault = fault_point(stream.stage)
        self._poison = poison_order()
        self._tasks: set[asyncio.Task[None]] = set()
        # Ids being handled here, and since when (monotonic s): `_keep_forever` refreshes the
        # idle time of the slow ones, and the reclaimer never hands one to this loop twice.
        self._in_flight_ids: dict[bytes, float] = {}
        # Last error per entry left pending, so its dead letter can say why (bounded).
        self._last_errors: dict[bytes, str] = {}
        self._capacity = asyncio.Event()
        self._capacity.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Read and process until `stop` is set, then let in-flight batches finish."""
        helpers = [asyncio.create_task(self._reclaim_forever(stop))]
        if self.trim_enabled:
            helpers.append(asyncio.create_task(self._trim_forever(stop)))
        # Runs until the last batch is done, through the drain after a stop as well.
        keeper = asyncio.create_task(self._keep_forever())
        try:
            await self._drain_own_pending()
            await self._read_forever(stop)
        except ServerError as exc:
            self.fatal = exc
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            await self.wait_idle()
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)

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
            await self._process_redelivered(batch)

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
            except TRANSIENT as exc:
                delay = backoff.next()
                log.warning(
                    "%s: read failed (%s); retrying in %.2fs", self.stream.stage, exc, delay
                )
                await sleep_or_stop(stop, delay)
                continue
            backoff.reset()
            if batch:
                self._spawn(batch, redelivered=False)

    async def _reclaim_forever(self, stop: asyncio.Event) -> None:
        period_s = max(0.05, self.claim_idle_ms / 2000)
        cursor = b"0-0"
        while not stop.is_set():
            await sleep_or_stop(stop, period_s)
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
                self.metrics.reclaimed.inc(len(batch))
                self._spawn(batch, redelivered=True)

    async def _keep_forever(self) -> None:
        """Every third of the claim time, refresh the idle time of the entries in flight here
        for longer than that (a slow gateway, a big batch), so that a live consumer keeps its
        work: a reclaim would count a delivery and could dead-letter an order being handled.
        A stalled or dead process refreshes nothing, and its entries are reclaimed as before."""
        period_s = max(0.05, self.claim_idle_ms / 3000)
        period_ms = max(1, int(period_s * 1000))
        while True:
            await asyncio.sleep(period_s)
            since = time.monotonic() - period_s
            slow = [mid for mid, started in self._in_flight_ids.items() if started <= since]
            for i in range(0, len(slow), 1000):
                try:
                    await self.stream.keep(slow[i : i + 1000], period_ms)
                except (ServerError, *TRANSIENT) as exc:
                    log.warning("%s: could not keep in-flight entries (%s)", self.stream.stage, exc)
                    break

    async def _trim_forever(self, stop: asyncio.Event) -> None:
        # Consumers that own nothing and have not read for this long are gone (crashed or
        # replaced); forgetting them keeps XINFO CONSUMERS bounded.
        forget_ms = max(60_000, 4 * self.claim_idle_ms)
        while not stop.is_set():
            await sleep_or_stop(stop, TRIM_INTERVAL_S)
            try:
                await self.stream.trim(forget_ms)
            except ServerError as exc:
                self.fatal = exc
                stop.set()
                return
            except TRANSIENT as exc:
                log.debug("%s: trim skipped (%s)", self.stream.stage, exc)

    async def _wait_capacity(self, stop: asyncio.Event) -> None:
        waiter = asyncio.create_task(self._capacity.wait())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        stopper.cancel()

    def _spawn(self, batch: list[Message], redelivered: bool) -> None:
        batch = [m for m in batch if m.msg_id not in self._in_flight_ids]
        if not batch:
            return
        self._in_flight_ids.update(dict.fromkeys((m.msg_id for m in batch), time.monotonic()))
        self.in_flight += len(batch)
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        task = asyncio.create_task(self._process_and_release(batch, redelivered))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _process_and_release(self, batch: list[Message], redelivered: bool) -> None:
        try:
            if redelivered:
                await self._process_redelivered(batch)
            else:
                await self._timed(batch)
        except ServerError as exc:
            self.fatal = exc
        except TRANSIENT as exc:
            log.warning("%s: batch of %d left pending (%s)", self.stream.stage, len(batch), exc)
            self.outcomes["retry"] += len(batch)
            self.metrics.retries.inc(len(batch))
        finally:
            self.in_flight -= len(batch)
            for message in batch:
                self._in_flight_ids.pop(message.msg_id, None)
            self._capacity.set()

    async def _process_redelivered(self, batch: list[Message]) -> None:
        """Re-deliveries: dead-letter those over budget, retry the rest after a growing delay."""
        batch = await self._ack_others(batch)  # whatever its deliveries: never this stage's
        if not batch:
            return
        await self.stream.delivery_counts(batch)
        retry: list[Message] = []
        for message in batch:
            if message.deliveries > self.max_deliveries:
                # The consumer(s) that had it died or gave up each time: the budget is spent.
                last = self._last_errors.pop(message.msg_id, "consumer stopped while handling it")
                await self._dead_letter(
                    message, f"gave up after {message.deliveries - 1} deliveries: {last}"
                )
            else:
                retry.append(message)
        if retry:
            # Never wait as long as a reclaim takes, or a peer would take the entry meanwhile.
            delay_s = retry_delay_s(max(m.deliveries for m in retry))
            await asyncio.sleep(min(delay_s, self.claim_idle_ms / 2000))
            await self._timed(retry)

    async def _timed(self, batch: list[Message]) -> None:
        """_process, observed as one batch's processing time (retry delays excluded)."""
        started = time.perf_counter()
        try:
            await self._process(batch)
        finally:
            self.metrics.processing.observe(time.perf_counter() - started)

    async def _ack_others(self, batch: list[Message]) -> list[Message]:
        """Ack, unread, the entries meant for the other reader of a shared stream (`dlq retry`
        of a snapshot dead letter: Message.only); returns the rest."""
        stage = self.stream.stage
        if not self.stream.foreign or all(not m.only or m.only == stage for m in batch):
            return batch  # every stage's own stream; on a foreign one, the usual case
        await self.stream.ack([m for m in batch if m.only and m.only != stage])
        return [m for m in batch if not m.only or m.only == stage]

    async def _admit(self, batch: list[Message]) -> list[Message]:
        """The messages of a batch to handle: those of another reader acked, an undecodable one
        dead-lettered (permanent)."""
        good: list[Message] = []
        for message in await self._ack_others(batch):
            if message.order is None:
                await self._dead_letter(message, message.error)
            else:
                good.append(message)
        return good

    async def _process(self, batch: list[Message]) -> None:
        good = await self._admit(batch)
        if not good:
            return
        if self._fault == "before_effect":
            die_now()
        try:
            decided = await self._handle(good)
        except PermanentError as exc:
            for message in good:
                await self._dead_letter(message, str(exc))
            return
        except TRANSIENT:
            raise
        except Exception as exc:
            if len(good) > 1:
                # Isolate the culprit: one bad order must not spend its batch-mates' budgets.
                for message in good:
                    await self._process([message])
                return
            # An unexpected handler error counts against the delivery budget like a transient one.
            log.exception("%s: handler failed on order %s", self.stream.stage, good[0].order_id)
            await self._failed(good, f"{type(exc).__name__}: {exc}")
            return
        if self._fault == "after_effect":
            die_now()
        await self._settle(decided)
        await self._leave_undecided(good, decided)

    async def _leave_undecided(self, batch: list[Message], decided: list[Decision]) -> None:
        """A message the handler left undecided (notify: leased by another consumer) is not a
        failure: it stays pending for a later reclaim, and this delivery does not count."""
        if len(decided) == len(batch):
            return  # the usual case: every message answered
        answered = {d.message.msg_id for d in decided}
        await self.stream.uncount_delivery([m for m in batch if m.msg_id not in answered])

    async def _handle(self, batch: list[Message]) -> list[Decision]:
        if self._poison is not None and any(m.order_id == self._poison for m in batch):
            raise InjectedFault(f"injected poison for order {self._poison}")
        return await self.handler.handle(batch)

    async def _settle(self, decided: list[Decision]) -> None:
        """Commit the decided messages; retry or dead-letter the ones the handler could not."""
        decisions = [d for d in decided if d.outcome]
        if len(decisions) < len(decided):
            for failure in decided:
                if not failure.outcome:
                    if failure.permanent:
                        await self._dead_letter(failure.message, failure.error)
                    else:
                        await self._failed([failure.message], failure.error)
        committed = await self.stream.commit(decisions)
        if self._fault == "after_commit":
            die_now()
        results = committed.results
        if -1 in results:
            for decision, result in zip(decisions, results, strict=True):
                if result == -1:
                    await self._dead_letter(decision.message, "order record is missing")
        settled = Counter(
            [
                d.outcome if result == 1 else "stale"
                for d, result in zip(decisions, results, strict=True)
                if result != -1
            ]
        )
        self.outcomes.update(settled)
        self.metrics.settled(settled)
        if committed.finished:
            self.metrics.finished(committed.finished)
        if self._last_errors:
            for decision in decisions:
                self._last_errors.pop(decision.message.msg_id, None)

    async def _failed(self, messages: list[Message], error: str) -> None:
        """Leave pending for a retry, or dead-letter when this was the last delivery allowed."""
        for message in messages:
            if message.deliveries >= self.max_deliveries:
                await self._dead_letter(
                    message, f"gave up after {message.deliveries} deliveries: {error}"
                )
            else:
                log.warning(
                    "%s: order %s failed (delivery %d of %d), will retry: %s",
                    self.stream.stage,
                    message.order_id,
                    message.deliveries,
                    self.max_deliveries,
                    error,
                )
                if len(self._last_errors) >= LAST_ERRORS_KEPT:
                    self._last_errors.pop(next(iter(self._last_errors)))
                self._last_errors[message.msg_id] = error
                self.outcomes["retry"] += 1
                self.metrics.retries.inc()

    async def _dead_letter(self, message: Message, error: str) -> None:
        log.error(
            "%s: dead-lettering entry %s (order %s): %s",
            self.stream.stage,
            message.msg_id.decode(),
            message.order_id or "?",
            error,
        )
        _, elapsed_ms = await self.stream.dead_letter(message, error)
        self._last_errors.pop(message.msg_id, None)
        self.outcomes["dead_lettered"] += 1
        self.metrics.dead_letters.inc()
        if elapsed_ms >= 0:
            self.metrics.finished([(DEAD_LETTERED, elapsed_ms, None)])


async def sleep_or_stop(stop: asyncio.Event, delay_s: float) -> None:
    """Sleep for delay_s, or less when `stop` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=delay_s)
