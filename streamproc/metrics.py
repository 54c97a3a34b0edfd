"""Every Prometheus metric streamproc exports, defined once, and the consumer's metrics endpoint.

Each long-running process serves its own metrics, in the classic text format (0.0.4):
- `streamproc consume --metrics-port N`: `ConsumerMetrics`, served by a thread of the process.
- `streamproc api`: `ApiMetrics` on `GET /metrics`, plus the gauges read from Redis once per
  scrape (streamproc.redis_collector). With several workers the values live in a shared
  PROMETHEUS_MULTIPROC_DIR, so one scrape covers every worker.
The run loop updates counters once per batch (`inc(n)`) and observes one processing time per
batch; the end-to-end latencies of a batch's orders are added to their histogram together
(`observe_many`: one update per bucket touched).
"""

from __future__ import annotations

import errno
import os
import socket
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
    make_wsgi_app,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics import disable_created_metrics
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from streamproc.errors import ConfigError
from streamproc.models import COMPLETED, TERMINAL_STATES, Order
from streamproc.settings import NOTIFICATION_CHANNELS
from streamproc.workflow import TRANSITIONS

# A `_created` sample per series doubles the output, and no dashboard or alert reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Bucket upper bounds, in seconds. A batch of up to 200 orders takes a few milliseconds, longer
# behind a slow gateway; an order takes from milliseconds (idle pipeline) to minutes (a backlog).
BATCH_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
ORDER_LATENCY_BUCKETS_S = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600,
)  # fmt: skip
GATEWAY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
HTTP_BUCKETS_S = GATEWAY_BUCKETS_S

STALE = "stale"
# The snapshot stage has no row in the workflow table: what it settles is "snapshotted".
SNAPSHOTTED = "snapshotted"
PAYMENT_OUTCOMES = ("succeeded", "declined", "error")
NOTIFICATION_STATUSES = ("sent", "failed")
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER = "other"


def stage_outcomes(stage: str) -> tuple[str, ...]:
    """Every `outcome` label a stage's messages can carry."""
    decided = [outcome for (source, outcome) in TRANSITIONS if source == stage]
    if stage == "snapshot":
        decided.append(SNAPSHOTTED)
    return (*decided, STALE)


def add_process_collectors(registry: CollectorRegistry) -> None:
    """The process_* (CPU, memory, fds) and python_* (GC, version) metrics of this process."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)


class ConsumerMetrics:
    """Every metric of a consumer process, on its own registry (nothing module-global)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.messages = Counter(
            "streamproc_stage_messages",
            "Messages settled by a stage, by the outcome its handler decided "
            "(stale: the order had moved on, acked only).",
            ("stage", "outcome"),
            registry=r,
        )
        self.processing = Histogram(
            "streamproc_stage_processing_seconds",
            "Wall time to handle and commit one batch of a stage.",
            ("stage",),
            buckets=BATCH_BUCKETS_S,
            registry=r,
        )
        self.retries = Counter(
            "streamproc_stage_retries",
            "Messages left pending for another delivery after a failure.",
            ("stage",),
            registry=r,
        )
        self.dead_letters = Counter(
            "streamproc_dead_letters",
            "Messages this process moved to the dead-letter stream.",
            ("stage",),
            registry=r,
        )
        self.reclaimed = Counter(
            "streamproc_stage_reclaimed",
            "Idle pending entries this process reclaimed (XAUTOCLAIM).",
            ("stage",),
            registry=r,
        )
        self.in_flight = Gauge(
            "streamproc_stage_in_flight",
            "Messages being handled by this process now.",
            ("stage",),
            registry=r,
        )
        self.order_latency = Histogram(
            "streamproc_order_latency_seconds",
            "Time from ingest to a terminal state, observed by the process that committed it.",
            ("outcome",),
            buckets=ORDER_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.payments = Counter(
            "streamproc_payments",
            "Payment gateway results (error: the call failed).",
            ("outcome",),
            registry=r,
        )
        self.gateway = Histogram(
            "streamproc_payment_gateway_seconds",
            "Payment gateway call latency (one call charges a batch).",
            buckets=GATEWAY_BUCKETS_S,
            registry=r,
        )
        self.notifications = Counter(
            "streamproc_notifications",
            "Notification send attempts by channel and result.",
            ("channel", "status"),
            registry=r,
        )
        self.revenue = Counter(
            "streamproc_completed_revenue",
            "Revenue of the orders this process completed, in currency units.",
            ("currency",),
            registry=r,
        )
        add_process_collectors(r)
        self._revenue_by_currency: dict[str, Any] = {}
        self._payment_results = [self.payments.labels(o) for o in PAYMENT_OUTCOMES]

    def stage(self, stage: str) -> StageMetrics:
        """The pre-labelled metrics of one stage (every series exists from the start, at 0)."""
        if stage == "notify":
            for channel in NOTIFICATION_CHANNELS:
                for status in NOTIFICATION_STATUSES:
                    self.notifications.labels(channel, status)
        return StageMetrics(self, stage)

    def payment_results(self, approved: int, declined: int) -> None:
        """One gateway call's answers."""
        succeeded, refused, _ = self._payment_results
        if approved:
            succeeded.inc(approved)
        if declined:
            refused.inc(declined)

    def payment_error(self, charges: int) -> None:
        """A gateway call that failed, with the charges it carried."""
        self._payment_results[2].inc(charges)

    def notification_attempts(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Attempts by (channel, status)."""
        for (channel, status), count in counts.items():
            self.notifications.labels(channel, status).inc(count)

    def completed_revenue(self, cents_by_currency: Mapping[str, int]) -> None:
        """Revenue of completions, per currency, in minor units (cents)."""
        for currency, cents in cents_by_currency.items():
            child = self._revenue_by_currency.get(currency)
            if child is None:
                child = self._revenue_by_currency[currency] = self.revenue.labels(currency)
            child.inc(cents / 100)


class StageMetrics:
    """One stage's series, labelled once: the run loop's hot path only increments them."""

    def __init__(self, metrics: ConsumerMetrics, stage: str) -> None:
        self.metrics = metrics
        self.stage = stage
        self._messages = {o: metrics.messages.labels(stage, o) for o in stage_outcomes(stage)}
        self.processing = metrics.processing.labels(stage)
        self.retries = metrics.retries.labels(stage)
        self.dead_letters = metrics.dead_letters.labels(stage)
        self.reclaimed = metrics.reclaimed.labels(stage)
        self.in_flight = metrics.in_flight.labels(stage)
        self._in_flight_readers: list[Callable[[], float]] = []
        self._latency = {s: metrics.order_latency.labels(s) for s in sorted(TERMINAL_STATES)}

    def watch_in_flight(self, read: Callable[[], float]) -> None:
        """Add `read()` to the in-flight gauge, read at scrape time (no cost per message); a
        stage reading two streams has a loop, and a reader, per stream."""
        readers = self._in_flight_readers
        readers.append(read)
        self.in_flight.set_function(lambda: sum(r() for r in readers))

    def settled(self, counts: Mapping[str, int]) -> None:
        """Messages settled by one batch, per outcome."""
        for outcome, count in counts.items():
            child = self._messages.get(outcome)
            if child is None:
                child = self._messages[outcome] = self.metrics.messages.labels(self.stage, outcome)
            child.inc(count)

    def finished(self, orders: Iterable[tuple[str, int, Order | None]]) -> None:
        """Orders this batch moved to a terminal state: (state, ms since ingest, order)."""
        revenue: dict[str, int] = {}
        elapsed: dict[str, list[float]] = {}
        for state, elapsed_ms, order in orders:
            if elapsed_ms >= 0:
                seconds = elapsed.get(state)
                if seconds is None:
                    seconds = elapsed[state] = []
                seconds.append(elapsed_ms / 1000)
            if state == COMPLETED and order is not None:
                revenue[order.currency] = revenue.get(order.currency, 0) + order.total_cents
        for state, seconds in elapsed.items():
            observe_many(self._latency[state], seconds)
        if revenue:
            self.metrics.completed_revenue(revenue)


def observe_many(histogram: Any, amounts: list[float]) -> None:
    """histogram.observe(a) for each amount, as one update per bucket touched and one of the sum.

    A batch completes up to a few hundred orders, each an observation of the end-to-end latency:
    observing them one by one (a lock and a scan of the bounds each) was a consumer's largest
    metrics cost. This reads the labelled child's bounds and values, which prometheus_client keeps
    in `_upper_bounds`, `_buckets` and `_sum`; should a version not, it observes one by one.
    """
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for amount in amounts:
            histogram.observe(amount)
        return
    counts: dict[int, int] = {}
    for amount in amounts:
        # observe() counts an amount in the first bucket whose bound is >= it (the last is +Inf).
        i = bisect_left(bounds, amount)
        counts[i] = counts.get(i, 0) + 1
    total.inc(sum(amounts))
    for i, count in counts.items():
        buckets[i].inc(count)


class ApiMetrics:
    """The API's own metrics (requests by route template, method and status; their latency),
    and the registry /metrics renders with the Redis gauges of each scrape."""

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        self.multiprocess = multiprocess_dir is not None
        # In multiprocess mode the values go to files in the shared directory (prometheus_client
        # chose that at import, from PROMETHEUS_MULTIPROC_DIR) and are collected from there.
        own = None if self.multiprocess else CollectorRegistry()
        self.requests = Counter(
            "streamproc_http_requests",
            "HTTP requests answered, by route template, method and status code.",
            ("route", "method", "status"),
            registry=own,
        )
        self.duration = Histogram(
            "streamproc_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template and method.",
            ("route", "method"),
            buckets=HTTP_BUCKETS_S,
            registry=own,
        )
        if own is None:
            self.registry = CollectorRegistry()
            MultiProcessCollector(self.registry, multiprocess_dir)  # type: ignore[no-untyped-call]
            # No process_* metrics: they would describe whichever worker answered the scrape.
        else:
            self.registry = own
            add_process_collectors(own)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        if method not in HTTP_METHODS:
            method = OTHER  # a label value per invented method would be unbounded
        self.requests.labels(route, method, str(status)).inc()
        self.duration.labels(route, method).observe(seconds)

    def render(self, *extra: Collector) -> bytes:
        """This process's (or every worker's) metrics and `extra`, in the classic text format."""
        return generate_latest(_Chain((self.registry, *extra)))


class _Chain:
    """Collectors rendered as one (generate_latest takes any object with collect())."""

    def __init__(self, parts: tuple[Collector, ...]) -> None:
        self.parts = parts

    def collect(self) -> Iterator[Metric]:
        for part in self.parts:
            yield from part.collect()


def multiprocess_dir() -> str | None:
    """PROMETHEUS_MULTIPROC_DIR when set: then every API worker writes its values there."""
    return os.environ.get(MULTIPROC_ENV) or None


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a scrape in progress never holds the process up at exit


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not worth a log line each."""


def serve(registry: CollectorRegistry, host: str, port: int) -> WSGIServer:
    """Serve `registry` on http://host:port/metrics from a daemon thread; a ConfigError when the
    address cannot be bound (the port is taken)."""
    app = make_wsgi_app(registry)

    def classic(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        # Prometheus asks for OpenMetrics first; every process answers in the classic format,
        # the one promtool checks and the API serves.
        environ.pop("HTTP_ACCEPT", None)
        return app(environ, start_response)

    server_class = _Server6 if ":" in host else _Server
    try:
        server = make_server(host, port, classic, server_class, handler_class=_QuietHandler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"metrics port {port} on {host} is already in use: choose another "
                "--metrics-port (STREAMPROC_METRICS_PORT), or 0 to serve no metrics"
            ) from None
        raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from None
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    return server
