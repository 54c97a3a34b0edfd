"""`streamproc consume`: run stage loops in one process, with signal handling and drain."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket

from streamproc.analytics.snapshotter import SnapshotLoop
from streamproc.analytics.store import FactStore
from streamproc.connection import async_client
from streamproc.context import StageContext
from streamproc.errors import ServerError
from streamproc.keys import Keys
from streamproc.metrics import ConsumerMetrics, serve
from streamproc.runloop import RunLoop
from streamproc.schedule import Scheduled, ScheduleLoop
from streamproc.settings import Settings
from streamproc.stages import default_concurrency, load_handler
from streamproc.transport import StageStream, ensure_groups
from streamproc.windows import WindowWriter

log = logging.getLogger("streamproc.worker")

EXIT_OK, EXIT_UNFINISHED, EXIT_SERVER = 0, 1, 3
# Young-generation size of the cyclic garbage collector. A consumer allocates a handful of short-
# lived container objects per message and stage, almost all freed by reference counting; with
# CPython's default (700) it ran collections thousands of times a second.
GC_YOUNG_THRESHOLD = 50_000
# Time for the last flush of the dashboard windows once the loops have stopped.
LAST_FLUSH_S = 0.5


def default_consumer_name() -> str:
    """host-pid: unique per process, so a restarted process never inherits a dead one's name."""
    return f"{socket.gethostname()}-{os.getpid()}"


async def run_worker(
    settings: Settings,
    url: str,
    stages: tuple[str, ...],
    consumer: str,
    concurrency: int | None,
    metrics_address: tuple[str, int] | None = None,
) -> int:
    """Run the given stages until SIGTERM/SIGINT; returns the process exit code.

    With `metrics_address` (host, port) the process serves its Prometheus metrics there.
    """
    metrics = ConsumerMetrics()
    if metrics_address is not None:
        host, port = metrics_address
        serve(metrics.registry, host, port)  # first: a taken port fails before any work
        log.info("metrics on http://%s:%d/metrics", host, port)
    client = async_client(url, max_connections=32 + 8 * len(stages), direct_send=True)
    try:
        ctx = StageContext.build(settings, client, metrics)
        await ensure_groups(client, ctx.keys)
        loops = [loop for stage in stages for loop in _loops(ctx, stage, consumer, concurrency)]
        _tune_gc()
        stop = asyncio.Event()
        _install_signals(stop)
        log.info("consumer %s running stages %s", consumer, ", ".join(stages))
        tasks = [asyncio.create_task(loop.run(stop)) for loop in loops]
        loops_done = asyncio.Event()
        windows = asyncio.create_task(WindowWriter(ctx.scripts, ctx.keys, metrics).run(loops_done))
        waiter = asyncio.create_task(stop.wait())
        await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
        stop.set()  # one loop ending (fatal error) stops the others
        done, pending = await asyncio.wait(tasks, timeout=settings.shutdown_grace_s)
        loops_done.set()  # the windows get what the last batches counted
        with contextlib.suppress(Exception):
            await asyncio.wait_for(windows, LAST_FLUSH_S)
        for loop in loops:
            if loop.fatal is not None:
                log.error("%s", loop.fatal)
                return EXIT_SERVER
        if pending:
            log.warning("grace period over with work in flight; it will be reclaimed")
            return EXIT_UNFINISHED
        for task in done:
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        return EXIT_OK
    except ServerError:
        raise
    finally:
        await client.aclose()


def _loops(
    ctx: StageContext, stage: str, consumer: str, concurrency: int | None
) -> list[RunLoop | SnapshotLoop | ScheduleLoop]:
    keys: Keys = ctx.keys
    if stage == "snapshot":
        stream = StageStream(ctx.client, ctx.scripts, keys, stage, consumer)
        return [SnapshotLoop(ctx, stream, FactStore(ctx.settings.analytics_path))]
    batch = ctx.settings.batch_size
    handler = load_handler(stage, ctx)
    main, *rest = keys.sources(stage)
    metrics = ctx.metrics.stage(stage)
    # One loop per stream the stage reads. The first carries its work; a second (notify's own
    # stream: dead letters re-driven, entries earlier versions wrote) is a trickle, and one batch
    # in flight is plenty for it.
    loops: list[RunLoop | SnapshotLoop | ScheduleLoop] = [
        RunLoop(
            StageStream(ctx.client, ctx.scripts, keys, stage, consumer, stream),
            handler,
            concurrency=in_flight,
            batch_size=batch,
            block_ms=ctx.settings.block_ms,
            claim_idle_ms=ctx.settings.claim_idle_ms,
            max_deliveries=ctx.settings.max_deliveries,
            metrics=metrics,
        )
        for stream, in_flight in [
            (main, concurrency or default_concurrency(stage, batch)),
            *((other, batch) for other in rest),
        ]
    ]
    if isinstance(handler, Scheduled):  # notify: retries, resends and retention
        loops.append(ScheduleLoop(handler, batch_size=batch))
    return loops


def _tune_gc() -> None:
    """Collect cycles less often, and never re-scan what start-up loaded (modules, handlers)."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def _install_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            # Second signal: leave now; unacked entries are reclaimed by other consumers later.
            os._exit(128 + signum)
        log.info("signal %d: finishing in-flight work", signum)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
