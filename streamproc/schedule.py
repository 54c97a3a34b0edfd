"""The schedule loop: a stage's time-driven work, run beside its stage loop.

The notify stage keeps pending notification records in a schedule (retries after a failed send,
resends, attempts whose consumer died); this loop asks the handler to attempt the due ones, and
now and then to drop what is past retention. Like the run loop it knows nothing of what the work
is, and a failing round only waits and tries again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Protocol, runtime_checkable

from streamproc.errors import ServerError
from streamproc.runloop import TRANSIENT, Backoff, sleep_or_stop

log = logging.getLogger("streamproc.schedule")

# Retries and resends start within this long of being due; one cheap ZRANGEBYSCORE per poll.
POLL_S = 0.2
HOUSEKEEPING_S = 60.0


@runtime_checkable
class Scheduled(Protocol):
    """A handler with work that comes due over time."""

    stage: str

    async def run_due(self, limit: int) -> int:
        """Do up to `limit` items that are due; how many were due."""
        ...

    async def housekeeping(self) -> int:
        """Periodic clean-up (retention); how many items it removed."""
        ...


class ScheduleLoop:
    """Same interface as RunLoop (run, fatal, outcomes) for a handler's scheduled work."""

    def __init__(
        self,
        work: Scheduled,
        *,
        batch_size: int,
        poll_s: float = POLL_S,
        housekeeping_s: float = HOUSEKEEPING_S,
    ) -> None:
        self.work = work
        self.batch_size = max(1, batch_size)
        self.poll_s = poll_s
        self.housekeeping_s = housekeeping_s
        self.fatal: ServerError | None = None
        self.outcomes: Counter[str] = Counter()

    async def run(self, stop: asyncio.Event) -> None:
        """Attempt due items until `stop`; the round in progress finishes first."""
        backoff = Backoff(first_s=self.poll_s, cap_s=5.0)
        next_housekeeping = 0.0
        while not stop.is_set():
            try:
                if time.monotonic() >= next_housekeeping:
                    self.outcomes["expired"] += await self.work.housekeeping()
                    next_housekeeping = time.monotonic() + self.housekeeping_s
                done = await self.work.run_due(self.batch_size)
            except ServerError as exc:
                self.fatal = exc
                return
            except TRANSIENT as exc:
                log.warning("%s: scheduled work failed (%s); retrying", self.work.stage, exc)
                await sleep_or_stop(stop, backoff.next())
                continue
            except Exception:
                # A bug in one round must not stop the stage beside it; the items stay due.
                log.exception("%s: scheduled work failed", self.work.stage)
                await sleep_or_stop(stop, backoff.next())
                continue
            backoff.reset()
            self.outcomes["due"] += done
            if done < self.batch_size:
                await sleep_or_stop(stop, self.poll_s)
