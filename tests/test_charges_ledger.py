"""Successful charges per order are counted from the gateway's ledger, over every attempt's key:
the export and the API's order view agree, and the gateway keeps no counter of its own. The
ledger keeps results in buckets by the order's creation ms; results recorded before buckets (here:
every first attempt) stay in the old single hash and still count."""

from __future__ import annotations

import asyncio

import redis

from api.handlers.orders import order_view
from streamproc.connection import async_client, sync_client
from streamproc.export import iter_orders
from streamproc.gateway import Charge, PaymentGateway, ledger_keys, successful_charges
from streamproc.keys import Keys, record_bucket
from streamproc.lua import AsyncScripts
from streamproc.models import Line, Order, encode_order
from streamproc.orderview import load_order

KEYS = Keys()
CREATED_MS = 1_795_637_643_137

# order id → (attempt, the gateway's outcome per attempt charged so far; True = ok)
PAYMENTS: dict[str, tuple[int, list[bool]]] = {
    "R2": (2, [True, True]),  # re-submitted, and both attempts' keys were charged
    "D2": (2, [False, True]),  # declined first, charged on the second attempt
    "X3": (3, [True, False]),  # third attempt not at the gateway yet
    "C1": (1, [True]),
    "N1": (1, []),  # never charged
}
EXPECTED = {"R2": 2, "D2": 1, "X3": 1, "C1": 1, "N1": 0}
CURRENT_OUTCOME = {"R2": "ok", "D2": "ok", "X3": "", "C1": "ok", "N1": ""}


def store_order(r: redis.Redis, order_id: str, attempt: int) -> None:
    """An order hash as the scripts leave it (no `a` field on a first attempt, as ingest.lua)."""
    order = Order(order_id, 7, "Pat", "USD", "2025-11-10T00:00:00Z", [Line("S", "", 1, 1250)])
    fields = {"s": "failed", "d": encode_order(order), "c": str(CREATED_MS)}
    if attempt > 1:
        fields["a"] = str(attempt)
    r.hset(KEYS.order(order_id), mapping=fields)


def charge_through_gateway(url: str) -> None:
    """Each attempt's key through the real gateway script, approved or declined as PAYMENTS says."""

    async def main() -> None:
        client = async_client(url)
        try:
            scripts = AsyncScripts.register(client)
            approving = PaymentGateway(scripts, KEYS, 1, 1.0, latency_ms=0)
            declining = PaymentGateway(scripts, KEYS, 1, 0.0, latency_ms=0)
            for order_id, (attempt, outcomes) in PAYMENTS.items():
                keys = ledger_keys(order_id, attempt)
                for n, (key, ok) in enumerate(zip(keys, outcomes, strict=False), start=1):
                    gateway = approving if ok else declining
                    bucket = record_bucket(CREATED_MS, order_id) if n > 1 else ""
                    (result,) = await gateway.charge([Charge(key, order_id, 1250, "USD", bucket)])
                    assert result.approved == ok
        finally:
            await client.aclose()

    asyncio.run(main())


def views(url: str) -> dict[str, tuple[str, int]]:
    """The API's order view of each order: its payment status and successful charges."""

    async def main() -> dict[str, tuple[str, int]]:
        client = async_client(url)
        try:
            found = {}
            for order_id in PAYMENTS:
                stored = await load_order(client, KEYS, order_id)
                assert stored is not None, order_id
                assert stored.payment.outcome == CURRENT_OUTCOME[order_id], order_id
                payment = order_view(stored).payment
                found[order_id] = (payment.idempotency_key, payment.successful_charges)
            return found
        finally:
            await client.aclose()

    return asyncio.run(main())


def test_ledger_keys_cover_every_attempt_and_only_ok_results_count() -> None:
    assert ledger_keys("R2", 1) == ["pay:R2"]
    assert ledger_keys("R2", 3) == ["pay:R2", "pay:R2:2", "pay:R2:3"]
    assert successful_charges([b"ok:1250:USD:1", None, "declined:1250:USD:2", "ok:5:EUR:3"]) == 2
    assert successful_charges([]) == 0


def test_export_and_order_view_count_charges_from_the_ledger_across_attempts(
    redis_url: str, r: redis.Redis
) -> None:
    for order_id, (attempt, _) in PAYMENTS.items():
        store_order(r, order_id, attempt)
    charge_through_gateway(redis_url)

    client = sync_client(redis_url)
    try:
        # Pages of 2: an order's ledger keys are read back in their own page's order.
        exported = {o.order_id: (o.attempts, o.charges) for o in iter_orders(client, KEYS, page=2)}
    finally:
        client.close()
    assert exported == {oid: (PAYMENTS[oid][0], n) for oid, n in EXPECTED.items()}

    assert views(redis_url) == {
        "R2": ("pay:R2:2", 2),
        "D2": ("pay:D2:2", 1),
        "X3": ("pay:X3:3", 1),
        "C1": ("pay:C1", 1),
        "N1": ("pay:N1", 0),
    }
    # Everything the gateway wrote: its ledger (one key per attempt charged: the first attempts'
    # in the old hash, the later ones in their orders' buckets) and its stats.
    buckets = {
        KEYS.gateway_bucket(record_bucket(CREATED_MS, oid))
        for oid, (_, outcomes) in PAYMENTS.items()
        if len(outcomes) > 1
    }
    gateway_slot = KEYS.gateway_ledger.rsplit(":", 1)[0] + ":"
    assert {k for k in r.scan_iter() if k.startswith(gateway_slot)} == {
        KEYS.gateway_ledger,
        KEYS.gateway_stats,
        *buckets,
    }
    assert r.hlen(KEYS.gateway_ledger) == sum(1 for _, outcomes in PAYMENTS.values() if outcomes)
    assert sum(r.hlen(b) for b in buckets) == sum(
        len(outcomes) - 1 for _, outcomes in PAYMENTS.values() if outcomes
    )
