"""The stored history's formats: one-letter codes with ms after creation (what the scripts write
now), and `state@+ms` or `state@ms` steps (hashes written before), and the update time read from
the last step."""

from __future__ import annotations

import re

import pytest

from api.handlers.orders import timeline_stages
from streamproc.lua import script_source
from streamproc.models import STATES
from streamproc.orderview import CODE_STATES, TimelineStep, order_timeline, parse_timeline

CREATED = 1_795_637_643_137


# The same four steps as written now (codes) and before (`state@+ms`): ms after creation.
@pytest.mark.parametrize(
    "history",
    ["p0r1113a1186c1250", "pending@+0;reserved@+1113;paid@+1186;completed@+1250"],
)
def test_steps_are_ms_after_creation(history: str) -> None:
    steps = parse_timeline(history, CREATED)
    assert steps == [
        TimelineStep("pending", CREATED),
        TimelineStep("reserved", CREATED + 1113),
        TimelineStep("paid", CREATED + 1186),
        TimelineStep("completed", CREATED + 1250),
    ]


def test_every_code_and_a_negative_offset() -> None:
    # Every code, each state once; a negative offset is another machine's clock running behind.
    assert parse_timeline("p0r-5a7f8b9d10", CREATED) == [
        TimelineStep("pending", CREATED),
        TimelineStep("reserved", CREATED - 5),
        TimelineStep("paid", CREATED + 7),
        TimelineStep("failed", CREATED + 8),
        TimelineStep("rolled_back", CREATED + 9),
        TimelineStep("dead_lettered", CREATED + 10),
    ]


def test_a_code_with_equals_is_absolute() -> None:
    """Written when the order has no usable creation time."""
    assert parse_timeline("p0c=1795655477408", CREATED)[1] == TimelineStep(
        "completed", 1_795_655_477_408
    )
    steps, updated = order_timeline("p0d=1795655477408", None, None)
    assert (steps, updated) == (
        [TimelineStep("pending", 0), TimelineStep("dead_lettered", 1_795_655_477_408)],
        1_795_655_477_408,
    )


def test_old_and_coded_parts_mix() -> None:
    """The scripts recode an old history when they append to it; a reader takes a mix anyway."""
    raw = f"pending@+0;reserved@+5;failed@{CREATED + 9};p20r25a-1"
    assert parse_timeline(raw, CREATED) == [
        TimelineStep("pending", CREATED),
        TimelineStep("reserved", CREATED + 5),
        TimelineStep("failed", CREATED + 9),
        TimelineStep("pending", CREATED + 20),
        TimelineStep("reserved", CREATED + 25),
        TimelineStep("paid", CREATED - 1),
    ]


def test_malformed_codes_are_skipped() -> None:
    # Unknown codes, a code without a number, stray digits, `=-`, an upper-case letter.
    raw = "12p0x5rr7a=-q8Z9c=c12;;f"
    assert parse_timeline(raw, CREATED) == [
        TimelineStep("pending", CREATED),
        TimelineStep("reserved", CREATED + 7),
        TimelineStep("completed", CREATED + 12),
    ]


def test_the_scripts_write_the_readers_codes() -> None:
    """lib/order.lua's table and CODE_STATES agree, one letter for each state."""
    source = script_source("commit")
    table = source[source.index("ORDER_CODES = {") : source.index("}", source.index("ORDER_CODES"))]
    lua_codes = dict(re.findall(r"(\w+) = \"(\w)\"", table))
    assert lua_codes == {state: code for code, state in CODE_STATES.items()}
    assert sorted(lua_codes) == sorted(STATES)


def test_absolute_and_relative_steps_mix_in_an_older_order() -> None:
    """An order stored with absolute times and moved on since: both kinds in one history."""
    raw = f"pending@{CREATED};failed@{CREATED + 5};pending@+90000;reserved@+90012"
    assert [s.at_ms for s in parse_timeline(raw, CREATED)] == [
        CREATED,
        CREATED + 5,
        CREATED + 90000,
        CREATED + 90012,
    ]


def test_a_step_before_creation_by_another_clock_is_kept() -> None:
    """Consumers on other machines may run a few ms behind the importer: a negative offset."""
    assert parse_timeline("pending@+0;reserved@+-3", CREATED)[1] == TimelineStep(
        "reserved", CREATED - 3
    )


def test_malformed_steps_are_skipped() -> None:
    raw = "pending@+x;@+5;reserved@;paid@12a;failed@+--3;rolled_back@-4;completed@+7"
    assert parse_timeline(raw, CREATED) == [TimelineStep("completed", CREATED + 7)]


def test_update_time_is_the_last_step_else_u_else_creation() -> None:
    steps, updated = order_timeline("pending@+0;reserved@+40", str(CREATED), None)
    assert (len(steps), updated) == (2, CREATED + 40)
    # An older hash: u agrees with its last absolute step; the step is what is read.
    _, updated = order_timeline(f"pending@{CREATED};reserved@{CREATED + 9}", str(CREATED), "1")
    assert updated == CREATED + 9
    # A new order: no history stored, pending since c.
    steps, updated = order_timeline(None, str(CREATED), None)
    assert (steps, updated) == ([TimelineStep("pending", CREATED)], CREATED)
    # No usable step at all: u, then c.
    assert order_timeline("", str(CREATED), "77")[1] == 77
    assert order_timeline("", str(CREATED), None)[1] == CREATED


@pytest.mark.parametrize(
    ("states", "stages"),
    [
        # Now: the payment stage settles what it charges.
        (["pending", "reserved", "completed"], ["ingest", "reserve", "payment"]),
        (["pending", "reserved", "rolled_back"], ["ingest", "reserve", "payment"]),
        (["pending", "reserved", "dead_lettered"], ["ingest", "reserve", "payment"]),
        (["pending", "failed"], ["ingest", "reserve"]),
        # Orders an earlier version's finalize and rollback stages finished.
        (
            ["pending", "reserved", "paid", "completed"],
            ["ingest", "reserve", "payment", "finalize"],
        ),
        (
            ["pending", "reserved", "reserved", "rolled_back"],
            ["ingest", "reserve", "payment", "rollback"],
        ),
        (
            ["pending", "reserved", "reserved", "dead_lettered"],
            ["ingest", "reserve", "payment", "rollback"],
        ),
        (
            ["pending", "reserved", "paid", "dead_lettered"],
            ["ingest", "reserve", "payment", "finalize"],
        ),
        # A dead letter retried: the order is back where it was, then moves on.
        (
            ["pending", "reserved", "dead_lettered", "reserved", "completed"],
            ["ingest", "reserve", "payment", "reserve", "payment"],
        ),
    ],
)
def test_the_timeline_names_the_stage_behind_each_step(
    states: list[str], stages: list[str]
) -> None:
    assert timeline_stages(states) == stages
