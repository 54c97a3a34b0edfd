"""The history as the scripts write it (lua/lib/order.lua) and read it (lua/lib/submitted.lua),
run on the test server: codes and ms after c, old histories recoded, the dead-letter check."""

from __future__ import annotations

from importlib import resources
from typing import Any

import pytest
import redis

from streamproc.orderview import parse_timeline

LIB = resources.files("streamproc").joinpath("lua", "lib")
SOURCE = "".join(
    LIB.joinpath(f"{name}.lua").read_text("utf-8") for name in ("ms", "order", "submitted")
)
C = 1_795_637_643_137


def call(r: redis.Redis, function: str, *args: str | int | None) -> Any:
    """`function(args…)` in a script holding the two libraries; None is a missing field (false)."""
    params = ", ".join("false" if a is None else f"ARGV[{i}]" for i, a in enumerate(args, 1))
    return r.eval(
        f"{SOURCE}\nreturn {function}({params})", 0, *("" if a is None else a for a in args)
    )


def advance(
    r: redis.Redis, history: str | None, created: str | int | None, state: str, now: int
) -> str:
    """order_advance's new history."""
    return str(call(r, "order_advance", history, created, state, now))


def test_steps_are_codes_and_ms_after_creation(r: redis.Redis) -> None:
    history = None
    for state, offset in [("reserved", 1113), ("paid", 1186), ("completed", 1250)]:
        history = advance(r, history, C, state, C + offset)
    assert history == "p0r1113a1186c1250"
    assert advance(r, "p0", C, "reserved", C - 5) == "p0r-5"  # another machine's clock behind
    codes = [advance(r, "p0", C, state, C + 1)[2:] for state in ("failed", "rolled_back")]
    assert codes == ["f1", "b1"]
    assert advance(r, "p0r1", C, "dead_lettered", C + 2) == "p0r1d2"


@pytest.mark.parametrize("created", [None, "", "soon"])
def test_without_a_numeric_creation_time_steps_are_absolute(
    r: redis.Redis, created: str | None
) -> None:
    assert advance(r, None, created, "completed", C) == f"p0c={C}"


@pytest.mark.parametrize(
    ("history", "created", "recoded"),
    [
        ("pending@+0;reserved@+5;failed@+9", C, "p0r5f9"),
        (f"pending@{C};reserved@{C + 1786};failed@+1800", C, "p0r1786f1800"),
        (f"pending@{C};failed@+7", None, f"p={C}f7"),
        ("pending@+0;reserved@+-3", C, "p0r-3"),
        # Malformed parts and names that were never states go; a part in codes stays.
        ("pending@+0;paid@+x;@+5;reserved@-4;shipped@+6;failed@12a;r9;;", C, "p0r9"),
    ],
)
def test_appending_to_an_old_history_recodes_it(
    r: redis.Redis, history: str, created: int | None, recoded: str
) -> None:
    """An order re-submitted after the upgrade: one format again, the same timeline as before."""
    appended = advance(r, history, created, "pending", C + 20_000)
    step = "p20000" if created else f"p={C + 20_000}"
    assert appended == recoded + step
    created_ms = created or 0
    before = parse_timeline(history, created_ms)
    assert parse_timeline(appended, created_ms) == [
        *[s for s in before if s.state != "shipped"],
        *parse_timeline(step, created_ms),
    ]


@pytest.mark.parametrize(
    ("history", "dead_lettered"),
    [
        ("p0r5d9", True),
        ("p0d=1795637643137", True),
        ("p0d-3", True),
        ("dead_lettered@+5", True),
        ("pending@+0;dead_lettered@1795637643137;pending@+9", True),
        # `d` in state names, `c=` and long offsets are not the code.
        ("p0r5a7c12", False),
        ("p0c=1795637643137", False),
        ("pending@+0;reserved@+5;paid@+7;completed@+12", False),
        ("pending@+0;failed@+9;rolled_back@+10", False),
        ("", False),
        (None, False),
    ],
)
def test_the_dead_letter_check_takes_both_formats(
    r: redis.Redis, history: str | None, dead_lettered: bool
) -> None:
    assert bool(call(r, "order_was_dead_lettered", history)) is dead_lettered


@pytest.mark.parametrize(
    ("history", "created", "since"),
    [
        ("p0f5p87000", C, C + 87_000),
        (f"p0f5p={C + 87_000}", C, C + 87_000),
        ("pending@+0;failed@+5;pending@+87000", C, C + 87_000),
        (f"pending@{C};failed@{C + 5};pending@{C + 87_000}", C, C + 87_000),
        # Both formats in one history: the later pending step, whichever its form.
        ("pending@+0;failed@+5;p87000", C, C + 87_000),
        ("p0f5;pending@+87000", C, C + 87_000),
        ("p0f5p87000", None, None),  # relative, and no c to add it to
        ("f5", C, C),  # no pending step: from c
    ],
)
def test_a_later_attempt_is_timed_from_its_last_pending_step(
    r: redis.Redis, history: str, created: int | None, since: int | None
) -> None:
    now = C + 90_000
    elapsed = call(r, "elapsed_ms", now, created, history, "2")
    assert elapsed == (-1 if since is None else now - since)
    # A first attempt is timed from c whatever its history.
    assert call(r, "elapsed_ms", now, C, history, "1") == 90_000
