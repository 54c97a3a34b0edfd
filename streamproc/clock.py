"""UTC time in the forms streamproc stores and shows: epoch milliseconds, days, ISO 8601 with Z."""

from __future__ import annotations

import functools
import time
from datetime import UTC, datetime


def now_ms() -> int:
    """Wall-clock time in epoch milliseconds."""
    return int(time.time() * 1000)


def utc_day(ms: int) -> str:
    """The UTC calendar day (YYYY-MM-DD) of an epoch-milliseconds time."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d")


def iso_ms(ms: int) -> str:
    """An epoch-milliseconds time as ISO 8601 UTC with milliseconds and Z."""
    seconds, millis = divmod(ms, 1000)
    return f"{_iso_second(seconds)}.{millis:03d}Z"


@functools.lru_cache(maxsize=4096)
def _iso_second(seconds: int) -> str:
    # An order's timeline and a page of records share few distinct seconds; formatting is the cost.
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
