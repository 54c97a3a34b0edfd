"""The stored history's two formats: steps relative to creation (what the scripts write now) and
absolute ms (hashes written before), and the update time read from the last step."""

from __future__ import annotations

from streamproc.orderview import TimelineStep, order_timeline, parse_timeline

CREATED = 1_795_637_643_137


def test_relative_steps_are_ms_after_creation() -> None:
    steps = parse_timeline("pending@+0;reserved@+1786;paid@+1835;completed@+1965", CREATED)
    assert steps == [
        TimelineStep("pending", CREATED),
        TimelineStep("reserved", CREATED + 1786),
        TimelineStep("paid", CREATED + 1835),
        TimelineStep("completed", CREATED + 1965),
    ]


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
    assert parse_timeline("pending@+x;@+5;reserved@;paid@12a;completed@+7", CREATED) == [
        TimelineStep("completed", CREATED + 7)
    ]


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
