"""The health report's verdict per stage, from stream states alone (no server)."""

from __future__ import annotations

import pytest

from api.handlers.system import _report
from streamproc.keys import STAGES
from streamproc.monitor import ConsumerState, StreamState
from streamproc.workflow import DRAIN_ONLY


def state(stage: str, *, waiting: int = 0, live: bool = True) -> StreamState:
    consumers = [ConsumerState("c-1", 0, 10)] if live else []
    return StreamState(stage, waiting, waiting, 0, 0, True, consumers)


def test_every_stage_consumed_and_nothing_waiting_is_ok() -> None:
    report = _report([state(s) for s in STAGES], 0.1)
    assert report.status == "ok"
    assert {row.status for row in report.stages} == {"ok"}


@pytest.mark.parametrize("stage", DRAIN_ONLY)
def test_a_drain_only_stage_needs_no_consumer_while_nothing_waits(stage: str) -> None:
    report = _report([state(s, live=s != stage) for s in STAGES], 0.1)
    assert report.status == "ok", report
    assert report.checks["lag"].status == "ok"


@pytest.mark.parametrize("stage", DRAIN_ONLY)
def test_a_drain_only_stage_with_work_and_no_consumer_fails(stage: str) -> None:
    rows = [state(s, live=s != stage, waiting=3 if s == stage else 0) for s in STAGES]
    report = _report(rows, 0.1)
    assert report.status == "fail"
    assert stage in report.checks["lag"].detail


def test_any_other_stage_without_a_consumer_is_degraded() -> None:
    report = _report([state(s, live=s != "notify") for s in STAGES], 0.1)
    assert report.status == "degraded"
    assert report.checks["lag"].detail == "no live consumer: notify"
