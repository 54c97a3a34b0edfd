"""The metrics' building blocks: the latency the scripts hand back, the dashboard windows, the
quantile, and the metric classes (a real server where Redis is involved)."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis
from prometheus_client import generate_latest

from streamproc.clock import now_ms
from streamproc.connection import async_client
from streamproc.context import StageContext
from streamproc.lua import AsyncScripts
from streamproc.metrics import (
    ORDER_LATENCY_BUCKETS_S,
    ApiMetrics,
    ConsumerMetrics,
    observe_many,
    stage_outcomes,
)
from streamproc.models import Line, Order, encode_order
from streamproc.settings import Settings
from streamproc.transport import Decision, StageStream, ensure_groups
from streamproc.windows import StageRate, WindowWriter, quantile, stage_rates
from tests.metrics_support import parse, promtool_check, value
from tests.support import KEYS

ORDER = Order("M1", 7, "Mia", "EUR", "2025-11-10T00:00:00Z", [Line("S", "", 2, 1250)])


def test_quantile_interpolates_inside_the_bucket_like_promql() -> None:
    buckets = [(0.01, 10), (0.1, 10), (0.25, 11), (float("inf"), 11)]
    # rank 0.95 * 11 = 10.45: in (0.1, 0.25], 0.45 of the way through its one batch.
    assert quantile(0.95, buckets) == pytest.approx(0.1675)
    assert quantile(0.5, buckets) == pytest.approx(0.0055)  # 5.5 of the 10 under 10 ms
    assert quantile(0.95, [(0.5, 0), (float("inf"), 4)]) == 0.5  # beyond the last bound
    assert quantile(0.95, [(0.5, 0), (float("inf"), 0)]) is None
    assert quantile(0.95, []) is None


def test_stage_outcomes_come_from_the_workflow_table() -> None:
    assert stage_outcomes("reserve") == ("reserved", "failed", "stale")
    assert stage_outcomes("payment") == ("completed", "rolled_back", "stale")
    assert stage_outcomes("finalize") == ("completed", "stale")
    assert stage_outcomes("snapshot") == ("snapshotted", "stale")


def test_consumer_series_exist_from_the_start_and_count_per_batch() -> None:
    metrics = ConsumerMetrics()
    stage = metrics.stage("finalize")
    samples = parse(_render(metrics))
    assert (
        value(samples, "streamproc_stage_messages_total", stage="finalize", outcome="completed")
        == 0
    )
    assert value(samples, "streamproc_payments_total", outcome="error") == 0
    stage.settled({"completed": 3, "stale": 1})
    stage.finished([("completed", 1500, ORDER), ("completed", 20, ORDER), ("failed", -1, ORDER)])
    stage.watch_in_flight(lambda: 7)
    samples = parse(_render(metrics))
    assert (
        value(samples, "streamproc_stage_messages_total", stage="finalize", outcome="completed")
        == 3
    )
    assert value(samples, "streamproc_stage_messages_total", stage="finalize", outcome="stale") == 1
    latency = "streamproc_order_latency_seconds"
    assert value(samples, f"{latency}_count", outcome="completed") == 2
    assert value(samples, f"{latency}_sum", outcome="completed") == pytest.approx(1.52)
    assert value(samples, f"{latency}_bucket", outcome="completed", le="0.025") == 1
    assert value(samples, f"{latency}_count", outcome="failed") == 0  # unknown: not observed
    # Revenue of the completions only (2 x 12.50 each), in currency units.
    assert value(samples, "streamproc_completed_revenue_total", currency="EUR") == 50.0
    assert value(samples, "streamproc_stage_in_flight", stage="finalize") == 7
    promtool_check(_render(metrics))


def test_observe_many_counts_as_observing_one_by_one() -> None:
    # Amounts on, just under and just over bounds, past the last finite one, and zero.
    amounts = [0.0, 0.005, 0.0051, 0.3, 1.0, 1.0, 599.9, 600.0, 600.1, 5000.0]
    amounts += ORDER_LATENCY_BUCKETS_S
    one_by_one, batched = ConsumerMetrics(), ConsumerMetrics()
    for amount in amounts:
        one_by_one.order_latency.labels("completed").observe(amount)
    observe_many(batched.order_latency.labels("completed"), amounts)
    observe_many(batched.order_latency.labels("completed"), [])
    expected = parse(generate_latest(one_by_one.registry).decode())
    got = parse(generate_latest(batched.registry).decode())
    latency = {k: v for k, v in expected.items() if k[0].startswith("streamproc_order_latency")}
    assert latency  # the series compared below exist
    for key, number in latency.items():
        assert got[key] == pytest.approx(number), key


def test_api_metrics_keep_labels_bounded() -> None:
    metrics = ApiMetrics()
    metrics.observe("/api/orders/{order_id}", "GET", 200, 0.003)
    metrics.observe("other", "BREW", 404, 0.001)  # an invented method is "other"
    samples = parse(metrics.render().decode())
    requests = "streamproc_http_requests_total"
    assert value(samples, requests, route="/api/orders/{order_id}", method="GET", status="200") == 1
    assert value(samples, requests, route="other", method="other", status="404") == 1
    assert value(samples, "process_cpu_seconds_total") >= 0


def _render(metrics: ConsumerMetrics) -> str:
    from prometheus_client import generate_latest

    return generate_latest(metrics.registry).decode()


def test_windows_sum_what_every_consumer_flushed(redis_url: str, r: redis.Redis) -> None:
    async def main() -> tuple[list[int], dict[str, StageRate], dict[str, StageRate]]:
        client = async_client(redis_url)
        try:
            scripts = AsyncScripts.register(client)
            one, two = ConsumerMetrics(), ConsumerMetrics()  # two consumer processes
            for metrics, done in ((one, 20), (two, 10)):
                stage = metrics.stage("reserve")
                stage.settled({"reserved": done - 2, "failed": 2})
                for _ in range(5):
                    stage.processing.observe(0.003)
            one.stage("reserve").processing.observe(0.2)
            writers = [WindowWriter(scripts, KEYS, m) for m in (one, two)]
            # No streams (a flushed server): nothing is written, the counts wait.
            assert await writers[0].flush(now_s=995.0) == 0
            assert await client.keys("*") == []
            await ensure_groups(client, KEYS)
            written = [await w.flush(now_s=1000.0) for w in writers]
            written.append(await writers[0].flush(now_s=1001.0))  # nothing new: no round trip
            rates = await stage_rates(client, KEYS, ["reserve", "payment"], now_s=1003.0)
            later = await stage_rates(client, KEYS, ["reserve"], now_s=1066.0)
            return written, rates, later
        finally:
            await client.aclose()

    written, rates, later = asyncio.run(main())
    assert written[2] == 0 and written[0] > 0
    # 30 messages over the minute before the current window and what has passed of it (63 s);
    # 11 batches, the 95th percentile falls in the 0.1-0.25 s bucket.
    assert rates["reserve"].processed_per_s == pytest.approx(30 / 63, abs=0.001)
    assert rates["reserve"].p95_seconds == pytest.approx(0.1675)
    assert rates["payment"] == StageRate(0.0, None)
    assert later["reserve"] == StageRate(0.0, None)  # that window is out of the last minute
    assert r.hget(KEYS.stage_window(1000), "reserve:n") == "30"
    assert 0 < r.ttl(KEYS.stage_window(1000)) <= 300


def test_scripts_hand_back_the_latency_of_terminal_transitions(
    redis_url: str, r: redis.Redis
) -> None:
    now = now_ms()
    payload = encode_order(ORDER)
    # A first attempt: timed from its ingest (c). A re-submitted one (attempt 2): from its last
    # pending step, not from its first ingest; that step a code and ms after c as the scripts
    # write it (M4), or as hashes stored before hold it: `pending@<ms>` (M2), `pending@+<ms>` (M5).
    early = now - 90_000
    orders = {
        "M1": ("1", now - 4_000, f"pending@{now - 4_000};reserved@{now - 3_000};paid@{now}"),
        "M2": ("2", early, f"pending@{early};failed@1;pending@{now - 2_000};paid@{now}"),
        "M3": ("1", now - 1_000, f"pending@{now - 1_000};paid@{now}"),
        "M4": ("2", early, "p0f5p87000a90000"),
        "M5": ("2", early, "pending@+0;failed@+5;pending@+88500;paid@+90000"),
    }
    for order_id, (attempt, created, history) in orders.items():
        fields = {"s": "paid", "a": attempt, "k": "finalize", "d": payload, "c": created}
        r.hset(KEYS.order(order_id), mapping={**fields, "h": history})
    r.hset(KEYS.state_counts, "paid", 5)

    async def main() -> tuple[list[tuple[str, int, Order | None]], list[int], tuple[bytes, int]]:
        client = async_client(redis_url)
        try:
            ctx = StageContext.build(Settings(redis_url=redis_url), client)
            await ensure_groups(client, KEYS)
            for order_id, (attempt, _, _) in orders.items():
                fields = {"o": order_id, "a": attempt, "s": "paid", "d": payload}
                await client.xadd(KEYS.stream("finalize"), fields)
            stream = StageStream(client, ctx.scripts, KEYS, "finalize", "c1")
            m1, m2, m3, m4, m5 = await stream.read(10, None)
            committed = await stream.commit([Decision(m, "completed") for m in (m1, m2, m4, m5)])
            replay = await stream.commit([Decision(m1, "completed")])  # stale: no latency
            dead = await stream.dead_letter(m3, "gave up")
            return committed.finished, [*replay.results, len(replay.finished)], dead
        finally:
            await client.aclose()

    started = time.time()
    finished, replay, dead = asyncio.run(main())
    slack_ms = (time.time() - started) * 1000 + 50
    (state1, elapsed1, order1), (state2, elapsed2, _), *rest = finished
    (state4, elapsed4, _), (state5, elapsed5, _) = rest
    assert (state1, state2, state4, state5, order1) == ("completed",) * 4 + (ORDER,)
    assert 4_000 <= elapsed1 <= 4_000 + slack_ms
    assert 2_000 <= elapsed2 <= 2_000 + slack_ms
    assert 3_000 <= elapsed4 <= 3_000 + slack_ms
    assert 1_500 <= elapsed5 <= 1_500 + slack_ms
    assert replay == [0, 0]
    dead_id, elapsed3 = dead
    assert r.xrange(KEYS.dead_letters)[0][0] == dead_id.decode()
    assert 1_000 <= elapsed3 <= 1_000 + slack_ms
    assert r.hget(KEYS.order("M3"), "s") == "dead_lettered"
