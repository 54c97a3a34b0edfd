"""A simulated payment gateway with its own ledger and idempotency keys (SPEC §3.1).

The outcome of a key is a pure function of (seed, key), so a run is reproducible; the ledger keeps
the first result recorded for a key, so a retry of the same key never charges twice. Calls are
asynchronous: a batch sleeps the configured latency concurrently with every other batch in flight.

A key is charged exactly when its first result is recorded as `ok`, so the ledger alone tells how
many successful charges an order had (ledger_keys, successful_charges): no counter is kept.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import redis

from streamproc.keys import Keys, bucket_keys, record_bucket
from streamproc.lua import AsyncScripts
from streamproc.metrics import ConsumerMetrics
from streamproc.replies import text


def idempotency_key(order_id: str, attempt: int) -> str:
    """`pay:<order_id>`, suffixed with the attempt for orders re-submitted by `ingest --force`."""
    return f"pay:{order_id}" if attempt <= 1 else f"pay:{order_id}:{attempt}"


def ledger_keys(order_id: str, attempt: int) -> list[str]:
    """The idempotency keys of an order's attempts 1..attempt: every key it can be charged under."""
    return [idempotency_key(order_id, n) for n in range(1, max(attempt, 1) + 1)]


def ledger_reads(keys: Keys, order_id: str, created_ms: int, attempt: int) -> list[tuple[str, ...]]:
    """The commands reading the results of an order's attempts 1..attempt: from its ledger
    bucket, then from the hash of results recorded before buckets (merge with ledger_results)."""
    names = ledger_keys(order_id, attempt)
    bucket = keys.gateway_bucket(record_bucket(created_ms, order_id))
    return [("HMGET", bucket, *names), ("HMGET", keys.gateway_ledger, *names)]


def ledger_results(
    bucketed: Sequence[bytes | None], before: Sequence[bytes | None]
) -> list[bytes | None]:
    """Per key, the result in its bucket, else the one recorded before buckets (or None)."""
    return [new if new is not None else old for new, old in zip(bucketed, before, strict=True)]


def order_results(
    client: redis.Redis, keys: Keys, order_id: str, created_ms: int, attempt: int
) -> list[bytes | None]:
    """An order's ledger results for attempts 1..attempt (None: key never called), read with a
    blocking client (the CLI, benchmarks and tests)."""
    (_, bucket, *names), (_, earlier, *_) = ledger_reads(keys, order_id, created_ms, attempt)
    pipe = client.pipeline(transaction=False)
    pipe.hmget(bucket, names)
    pipe.hmget(earlier, names)
    bucketed, before = pipe.execute()
    return ledger_results(bucketed, before)


def successful_charges(records: Iterable[bytes | str | None]) -> int:
    """How many of these ledger results (None: key never called) are approvals, i.e. charges."""
    return sum(text(record).startswith("ok:") for record in records)


def simulated_outcome(seed: int, key: str, success_rate: float) -> bool:
    """Deterministic per (seed, key): True with probability success_rate."""
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < success_rate


# Not frozen (but hashable): a frozen dataclass takes four times as long to build, and these are
# built per order. Nothing changes them once built.
@dataclass(slots=True, unsafe_hash=True)
class Charge:
    """One charge request."""

    key: str
    order_id: str
    amount_cents: int
    currency: str
    # Where the ledger keeps its result (keys.record_bucket; "" for the old single hash).
    bucket: str = ""


@dataclass(slots=True, unsafe_hash=True)
class ChargeResult:
    """The gateway's answer, as first recorded for the key."""

    approved: bool
    amount_cents: int
    currency: str
    recorded_ms: int


class PaymentGateway:
    """Client of the simulated gateway; counts calls in flight (the point of an async stage)."""

    def __init__(
        self,
        scripts: AsyncScripts,
        keys: Keys,
        seed: int,
        success_rate: float,
        latency_ms: int,
        metrics: ConsumerMetrics | None = None,
    ) -> None:
        self.scripts = scripts
        self.metrics = metrics
        self.keys = keys
        self.seed = seed
        self.success_rate = success_rate
        self.latency_s = latency_ms / 1000
        self.in_flight = 0
        self.peak_in_flight = 0

    async def charge(self, charges: Sequence[Charge]) -> list[ChargeResult]:
        """Charge a batch; each call's result is the one first recorded for its key."""
        if not charges:
            return []
        self.in_flight += len(charges)
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        started = time.perf_counter()
        try:
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
            keys = [self.keys.gateway_ledger, self.keys.gateway_stats]
            buckets, slots = bucket_keys(
                (c.bucket for c in charges), self.keys.gateway_bucket, 1, 3
            )
            args: list[object] = [int(time.time() * 1000), len(charges)]
            for c, slot in zip(charges, slots, strict=True):
                ok = simulated_outcome(self.seed, c.key, self.success_rate)
                args += [c.key, slot, c.amount_cents, c.currency, "ok" if ok else "declined"]
            raw = await self.scripts.run("gateway_charge", keys + buckets, args)
        except Exception:
            if self.metrics is not None:
                self.metrics.payment_error(len(charges))
            raise
        finally:
            self.in_flight -= len(charges)
            if self.metrics is not None:
                self.metrics.gateway.observe(time.perf_counter() - started)
        results = [parse_record(r) for r in raw]
        if self.metrics is not None:
            approved = sum(r.approved for r in results)
            self.metrics.payment_results(approved, len(results) - approved)
        return results


# The order hash's copy of its attempt's result (field p, written by the payment stage's commit):
# the outcome and the gateway's ms after the order's creation (field c), e.g. `ok@1186`.
_NOTE = re.compile(r"(ok|declined)@(-?[0-9]+)")


def payment_note(result: ChargeResult, created_ms: int) -> str:
    """The payment stage's note for the order hash: the outcome with the gateway's time, so the
    order view needs no ledger read; the bare outcome when the creation ms is unknown (0)."""
    outcome = "ok" if result.approved else "declined"
    return f"{outcome}@{result.recorded_ms - created_ms}" if created_ms else outcome


def read_payment_note(note: str, created_ms: int) -> tuple[str, int | None]:
    """The outcome a note names (the note itself for any other note: a bare outcome, a reserve
    failure's reason), and the gateway's ms when the note carries it (payment_note)."""
    noted = _NOTE.fullmatch(note)
    if noted is None or not created_ms:
        return (noted.group(1) if noted else note), None
    return noted.group(1), created_ms + int(noted.group(2))


def parse_record(record: bytes | str) -> ChargeResult:
    """A ledger value, `<outcome>:<amount>:<currency>:<ms>`, as a ChargeResult."""
    text = record.decode() if isinstance(record, bytes) else record
    outcome, amount, currency, ms = text.split(":")
    return ChargeResult(outcome == "ok", int(amount), currency, int(ms))
