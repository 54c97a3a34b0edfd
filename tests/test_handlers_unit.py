"""Stage handlers' decisions (order in, decision out) and the workflow table's consistency.

The mapping tests give the handlers stub effect services: no server at all. The stock tests run
the real Lua scripts on the session's server (fakeredis has no Lua here: `lupa` is not installed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any, cast

import pytest
import redis

from consumers.finalize import FinalizeHandler
from consumers.payment import PaymentHandler
from consumers.reserve import ReserveHandler
from consumers.rollback import RollbackHandler
from streamproc.connection import async_client
from streamproc.context import StageContext
from streamproc.gateway import Charge, ChargeResult
from streamproc.keys import READS_FROM, STAGES, Keys
from streamproc.models import STATES, TERMINAL_STATES, Line, Order
from streamproc.settings import Settings
from streamproc.stock import StockRequest, set_stock
from streamproc.transport import Decision, Message
from streamproc.workflow import DRAIN_ONLY, TERMINAL_OUTPUTS, TRANSITIONS, outputs_of

KEYS = Keys()


def order(order_id: str, *lines: tuple[str, int], price_cents: int = 250) -> Order:
    return Order(
        order_id,
        42,
        "Ann",
        "EUR",
        "2025-11-10T00:00:00Z",
        [Line(sku, "", qty, price_cents) for sku, qty in lines],
    )


def message(order_id: str, *lines: tuple[str, int], attempt: int = 1, state: str = "") -> Message:
    return Message(b"1-1", order_id, attempt, state, order(order_id, *lines))


class StubStock:
    """Records what a handler asks of the stock and answers with canned results."""

    def __init__(self, answers: list[str]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, list[StockRequest], bool | None]] = []

    async def reserve(self, requests: Sequence[StockRequest]) -> list[str]:
        self.calls.append(("reserve", list(requests), None))
        return self.answers

    async def settle(self, requests: Sequence[StockRequest], commit: bool) -> list[str]:
        self.calls.append(("settle", list(requests), commit))
        return self.answers


class StubGateway:
    """Approves the charges whose order id is in `approve`."""

    def __init__(self, approve: set[str]) -> None:
        self.approve = approve
        self.charges: list[Charge] = []

    async def charge(self, charges: Sequence[Charge]) -> list[ChargeResult]:
        self.charges += charges
        return [
            ChargeResult(c.order_id in self.approve, c.amount_cents, c.currency, 1) for c in charges
        ]


def stub_ctx(**services: Any) -> StageContext:
    return cast(StageContext, SimpleNamespace(**services))


def outcomes(decisions: list[Decision]) -> list[tuple[str, str, str, bool]]:
    return [(d.outcome, d.note, d.error, d.permanent) for d in decisions]


# -- decision mapping with stubs -------------------------------------------------------------


def test_reserve_maps_script_results_to_outcomes() -> None:
    stock = StubStock(["r", "f:out_of_stock:SKU-B", "f:unknown_sku:SKU-Z"])
    batch = [
        message("o1", ("SKU-A", 2)),
        message("o2", ("SKU-A", 1), ("SKU-B", 5), ("SKU-A", 3), attempt=2),
        message("o3", ("SKU-Z", 1)),
    ]
    decisions = asyncio.run(ReserveHandler(stub_ctx(stock=stock)).handle(batch))
    assert [d.message for d in decisions] == batch
    assert outcomes(decisions) == [
        ("reserved", "", "", False),
        ("failed", "out_of_stock:SKU-B", "", False),
        ("failed", "unknown_sku:SKU-Z", "", False),
    ]
    # One script call for the batch; reservation keys carry the attempt; lines of a SKU add up.
    ((name, requests, _),) = stock.calls
    assert name == "reserve"
    assert requests == [
        StockRequest("o1#1", {"SKU-A": 2}),
        StockRequest("o2#2", {"SKU-A": 4, "SKU-B": 5}),
        StockRequest("o3#1", {"SKU-Z": 1}),
    ]


@pytest.mark.parametrize(
    ("handler_cls", "commit", "good", "bad", "outcome"),
    [
        (FinalizeHandler, True, "c", "x", "completed"),
        (RollbackHandler, False, "x", "c", "rolled_back"),
    ],
)
def test_settling_stages_fail_permanently_without_their_reservation(
    handler_cls: type[FinalizeHandler], commit: bool, good: str, bad: str, outcome: str
) -> None:
    stock = StubStock([good, "", bad])
    batch = [message("s1", ("SKU-A", 1)), message("s2", ("SKU-A", 1)), message("s3", ("SKU-A", 1))]
    decisions = asyncio.run(handler_cls(stub_ctx(stock=stock)).handle(batch))
    assert [d.outcome for d in decisions] == [outcome, "", ""]
    assert not decisions[0].permanent and not decisions[0].error
    assert decisions[1].permanent and "'missing'" in decisions[1].error
    assert decisions[2].permanent and repr(bad) in decisions[2].error
    ((_, requests, committed),) = stock.calls
    assert committed is commit
    assert [req.reservation_key for req in requests] == ["s1#1", "s2#1", "s3#1"]


class SettlingStock:
    """Settles every reservation as asked ("c" committed, "x" released) except the keys in
    `refuse`, which answer `refusal`; records each settle call."""

    def __init__(self, refuse: frozenset[str] = frozenset(), refusal: str = "") -> None:
        self.refuse = refuse
        self.refusal = refusal
        self.calls: list[tuple[list[str], bool]] = []

    async def settle(self, requests: Sequence[StockRequest], commit: bool) -> list[str]:
        self.calls.append(([q.reservation_key for q in requests], commit))
        settled = "c" if commit else "x"
        return [self.refusal if q.reservation_key in self.refuse else settled for q in requests]


def test_payment_maps_gateway_answers_and_keys_by_attempt() -> None:
    gateway = StubGateway(approve={"p1", "p3"})
    stock = SettlingStock()
    batch = [
        message("p1", ("SKU-A", 2), ("SKU-B", 1)),
        message("p2", ("SKU-A", 1), attempt=3),
        message("p3", ("SKU-A", 1)),
    ]
    decisions = asyncio.run(PaymentHandler(stub_ctx(gateway=gateway, stock=stock)).handle(batch))
    assert [d.message for d in decisions] == batch
    assert outcomes(decisions) == [
        ("completed", "ok", "", False),
        ("rolled_back", "declined", "", False),
        ("completed", "ok", "", False),
    ]
    assert gateway.charges == [
        Charge("pay:p1", "p1", 750, "EUR"),
        Charge("pay:p2:3", "p2", 250, "EUR"),
        Charge("pay:p3", "p3", 250, "EUR"),
    ]
    # The approved orders' stock is committed in one call, the declined ones' released in one.
    assert stock.calls == [(["p1#1", "p3#1"], True), (["p2#3"], False)]


def test_payment_fails_permanently_when_a_reservation_cannot_be_settled() -> None:
    gateway = StubGateway(approve={"q1", "q2"})
    stock = SettlingStock(refuse=frozenset({"q2#1"}), refusal="x")
    batch = [message("q1", ("SKU-A", 1)), message("q2", ("SKU-A", 1))]
    decisions = asyncio.run(PaymentHandler(stub_ctx(gateway=gateway, stock=stock)).handle(batch))
    assert outcomes(decisions)[0] == ("completed", "ok", "", False)
    assert (decisions[1].outcome, decisions[1].permanent) == ("", True)
    assert "reservation is 'x', cannot commit it" in decisions[1].error
    assert stock.calls == [(["q1#1", "q2#1"], True)]  # nothing declined: no release call


# -- the workflow table -------------------------------------------------------------------------


def test_every_outcome_leads_to_known_stages_and_states() -> None:
    for (stage, outcome), transition in TRANSITIONS.items():
        where = f"{stage}/{outcome}"
        assert stage in STAGES, where
        assert transition.to_state in (*STATES, ""), where
        assert set(transition.outputs) <= set(STAGES), where
        assert set(transition.outputs) <= set(outputs_of(stage)), where
        if transition.next_stage:
            assert transition.next_stage in STAGES, where
            assert transition.outputs == (transition.next_stage,), where
            assert transition.to_state not in TERMINAL_STATES, where
        if transition.to_state in TERMINAL_STATES:
            assert transition.next_stage == "", where
            assert transition.outputs == TERMINAL_OUTPUTS, where
            # Notify's group reads the facts stream: every terminal order reaches it.
            assert READS_FROM["notify"] in transition.outputs, where
        if transition.to_state == "":
            assert (transition.next_stage, transition.outputs) == ("", ()), where


def test_every_stage_is_reachable_and_has_an_outcome() -> None:
    sources = {stage for stage, _ in TRANSITIONS}
    # The snapshot stage is a sink with its own loop (analytics/snapshotter.py), no transitions.
    assert sources == set(STAGES) - {"snapshot"}
    enqueued = {"reserve"} | {s for t in TRANSITIONS.values() for s in t.outputs}
    # A stage is also reached through another stage's stream its group reads (notify).
    reached = enqueued | {reader for reader, shared in READS_FROM.items() if shared in enqueued}
    # finalize and rollback only drain what earlier versions (and `dlq retry`) put there.
    assert reached == set(STAGES) - set(DRAIN_ONLY)
    for stage in DRAIN_ONLY:
        assert all(t.to_state in TERMINAL_STATES for (s, _), t in TRANSITIONS.items() if s == stage)
    # commit.lua names an output stream by one digit: at most nine per stage.
    for stage in STAGES:
        outputs = outputs_of(stage)
        assert len(outputs) <= 9, stage
        assert len(set(outputs)) == len(outputs), stage
    assert outputs_of("reserve") == ("payment", "snapshot")
    assert outputs_of("finalize") == ("snapshot",)
    assert outputs_of("payment") == ("snapshot",)
    assert outputs_of("notify") == ()


def test_every_non_terminal_state_has_a_way_out() -> None:
    entered = {t.to_state for t in TRANSITIONS.values() if t.to_state}
    # No stage leaves an order paid any more (the payment stage settles it); those an earlier
    # version left paid wait for finalize, whose way out is terminal.
    assert {"reserved", "completed", "failed", "rolled_back"} <= entered
    assert "paid" not in entered
    for state in entered - TERMINAL_STATES:
        # Some transition puts an order in this state and hands it to a further stage.
        assert any(t.to_state == state and t.next_stage for t in TRANSITIONS.values()), state


# -- the handlers over the real stock scripts ---------------------------------------------------


def run_handler(url: str, settings: Settings, stage_cls: type[Any], batch: list[Message]) -> Any:
    async def main() -> list[Decision]:
        client = async_client(url)
        try:
            handler = stage_cls(StageContext.build(settings, client))
            return cast(list[Decision], await handler.handle(batch))
        finally:
            await client.aclose()

    return asyncio.run(main())


def stock_of(r: redis.Redis, sku: str) -> tuple[int, ...]:
    return tuple(
        int(r.hget(KEYS.stock(c), sku) or -1) for c in ("available", "reserved", "committed")
    )


def test_reserve_and_finalize_on_real_scripts(redis_url: str, r: redis.Redis) -> None:
    settings = Settings(redis_url=redis_url, unknown_sku="reject")
    set_stock(r, KEYS, "SKU-A", 5)
    set_stock(r, KEYS, "SKU-B", 1)
    batch = [
        message("u1", ("SKU-A", 2), ("SKU-A", 1)),
        message("u2", ("SKU-A", 1), ("SKU-B", 2)),  # second line short: nothing taken
        message("u3", ("SKU-Q", 1)),  # unknown under reject
        message("u4", ("SKU-A", 3)),  # only 2 left after u1
    ]
    decisions = run_handler(redis_url, settings, ReserveHandler, batch)
    assert outcomes(decisions) == [
        ("reserved", "", "", False),
        ("failed", "out_of_stock:SKU-B", "", False),
        ("failed", "unknown_sku:SKU-Q", "", False),
        ("failed", "out_of_stock:SKU-A", "", False),
    ]
    assert stock_of(r, "SKU-A") == (2, 3, 0)
    assert stock_of(r, "SKU-B") == (1, 0, 0)
    assert r.hget(KEYS.stock("available"), "SKU-Q") is None

    # A replay of the batch returns the first results and takes nothing more.
    again = run_handler(redis_url, settings, ReserveHandler, batch)
    assert outcomes(again) == outcomes(decisions)
    assert stock_of(r, "SKU-A") == (2, 3, 0)

    # finalize: commits u1; an order with no reservation record, or a failed one, is a permanent
    # failure that moves nothing.
    done = run_handler(
        redis_url, settings, FinalizeHandler, [batch[0], message("u9", ("SKU-A", 1)), batch[1]]
    )
    assert [(d.outcome, d.permanent) for d in done] == [
        ("completed", False),
        ("", True),
        ("", True),
    ]
    assert "'missing'" in done[1].error
    assert "out_of_stock" in done[2].error
    assert stock_of(r, "SKU-A") == (2, 0, 3)
    assert stock_of(r, "SKU-B") == (1, 0, 0)
    # A rollback after the commit cannot release committed stock.
    undone = run_handler(redis_url, settings, RollbackHandler, batch[:1])
    assert [(d.outcome, d.permanent) for d in undone] == [("", True)]
    assert stock_of(r, "SKU-A") == (2, 0, 3)


def test_unknown_sku_is_created_with_default_stock_under_create(
    redis_url: str, r: redis.Redis
) -> None:
    settings = Settings(redis_url=redis_url, unknown_sku="create", default_stock=7)
    decisions = run_handler(
        redis_url,
        settings,
        ReserveHandler,
        [message("n1", ("SKU-NEW", 3)), message("n2", ("SKU-BIG", 8))],
    )
    assert outcomes(decisions) == [
        ("reserved", "", "", False),
        ("failed", "out_of_stock:SKU-BIG", "", False),
    ]
    assert stock_of(r, "SKU-NEW") == (4, 3, 0)
    assert r.hget(KEYS.stock("initial"), "SKU-NEW") == "7"
    assert r.hget(KEYS.stock("available"), "SKU-BIG") is None  # a failed order creates nothing

    released = run_handler(redis_url, settings, RollbackHandler, [message("n1", ("SKU-NEW", 3))])
    assert [d.outcome for d in released] == ["rolled_back"]
    assert stock_of(r, "SKU-NEW") == (7, 0, 0)


def test_one_order_attempt_twice_in_a_batch_moves_stock_once(
    redis_url: str, r: redis.Redis
) -> None:
    """The stock scripts decide a batch at once: a repeated reservation key still acts once."""
    settings = Settings(redis_url=redis_url, unknown_sku="reject")
    set_stock(r, KEYS, "SKU-D", 5)
    twice = message("d1", ("SKU-D", 2))
    batch = [twice, message("d2", ("SKU-D", 2)), twice, message("d3", ("SKU-D", 2))]
    decisions = run_handler(redis_url, settings, ReserveHandler, batch)
    assert [d.outcome for d in decisions] == ["reserved", "reserved", "reserved", "failed"]
    assert decisions[3].note == "out_of_stock:SKU-D"  # 1 left: d1 took 2 once, d2 took 2
    assert stock_of(r, "SKU-D") == (1, 4, 0)
    assert r.hget(KEYS.reservations, "d1#1") == "r"

    done = run_handler(redis_url, settings, FinalizeHandler, [twice, twice, batch[1]])
    assert [d.outcome for d in done] == ["completed", "completed", "completed"]
    assert stock_of(r, "SKU-D") == (1, 0, 4)
    # Stock stays whole: initial = available + reserved + committed.
    assert int(r.hget(KEYS.stock("initial"), "SKU-D") or 0) == 5
