"""Test-only fault hook: STREAMPROC_FAULT=<stage>:<point> SIGKILLs the process at that point.

STREAMPROC_FAULT_POISON=<order id> makes every handler raise on that order, like a bug would.
Points: before_effect (batch read, nothing done), after_effect (effects applied, not committed),
after_commit (transition + next XADD + XACK done; the commit and the ack are one atomic step here,
so this is also "after the ack"). The snapshot stage has its own: mid_write (a file's temp data
written, the Parquet not yet in place), before_register (in place, not yet in the manifest) and
mid_boards (registered, half of its leaderboard chunks added, rounded down);
so has notify: after_send (the log line or email sent, the record not yet marked sent).
Unset, the hook is a None check per batch.
"""

from __future__ import annotations

import os
import signal

POINTS = (
    "before_effect",
    "after_effect",
    "after_commit",
    "mid_write",
    "before_register",
    "mid_boards",
    "after_send",
)


def fault_point(stage: str, env: dict[str, str] | None = None) -> str | None:
    """The point at which this stage must die, if STREAMPROC_FAULT names it."""
    raw = (os.environ if env is None else env).get("STREAMPROC_FAULT", "")
    target, _, point = raw.partition(":")
    if target in (stage, "all") and point in POINTS:
        return point
    return None


def poison_order(env: dict[str, str] | None = None) -> str | None:
    """STREAMPROC_FAULT_POISON=<order id>: every stage's handler raises on that order."""
    return (os.environ if env is None else env).get("STREAMPROC_FAULT_POISON") or None


class InjectedFault(RuntimeError):
    """Raised by the poison hook, standing in for a handler bug."""


def die_now() -> None:
    """SIGKILL ourselves: no cleanup, no flush, exactly like a crash."""
    os.kill(os.getpid(), signal.SIGKILL)
