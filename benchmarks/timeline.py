"""A flood's timeline (`benchmarks.pipeline --timeline`): every quarter second, the CPU the server
and the consumers used, the time the server's main thread waited for a core, and each stage's
backlog. It shows what totals hide: a stage that trails the others and finishes after the rest
(notify did, until it kept four batches in flight), and how much of the run the server, the
pipeline's limit, spent queued behind other processes for a core.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import redis

from benchmarks.common import process_cpu_seconds
from streamproc.keys import STAGES, Keys

PERIOD_S = 0.25


def run_queue_seconds(pid: int) -> float:
    """Time the process's main thread has spent runnable but waiting for a core
    (/proc/PID/task/PID/schedstat); 0.0 when unavailable."""
    try:
        return int(Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def stage_backlog(client: redis.Redis, stream: str, group: str) -> int:
    """Entries of a stream the stage's group has not acked: not yet delivered, or pending."""
    try:
        groups = client.xinfo_groups(stream)
    except redis.ResponseError:
        return 0  # not created yet
    return sum(
        int(g.get("lag") or 0) + int(g["pending"]) for g in groups if g["name"].decode() == group
    )


class Timeline:
    """Samples a flood from a thread: attached once the consumers are up, detached once the
    pipeline is drained (benchmarks.pipeline's on_started and on_drained)."""

    def __init__(self, url: str, period_s: float = PERIOD_S) -> None:
        self.url = url
        self.period_s = period_s
        self.rows: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def attach(self, server: int, consumers: list[int]) -> None:
        """Start sampling the server's and the consumers' processes."""
        self._thread = threading.Thread(
            target=self._sample, args=(server, consumers), name="timeline", daemon=True
        )
        self._thread.start()

    def detach(self) -> None:
        """Stop sampling (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _sample(self, server: int, consumers: list[int]) -> None:
        client = redis.Redis.from_url(self.url)
        keys = Keys()
        reads = {stage: (keys.sources(stage), keys.group(stage)) for stage in STAGES}
        started = time.perf_counter()
        before: tuple[float, float, float, float] | None = None
        try:
            while not self._stop.is_set():
                now = (
                    time.perf_counter() - started,
                    process_cpu_seconds(server),
                    sum(process_cpu_seconds(pid) for pid in consumers),
                    run_queue_seconds(server),
                )
                backlog = {
                    stage: sum(stage_backlog(client, s, group) for s in sources)
                    for stage, (sources, group) in reads.items()
                }
                if before is not None:
                    span = now[0] - before[0]
                    self.rows.append(
                        {
                            "t": round(now[0], 2),
                            "server_busy": round((now[1] - before[1]) / span, 3),
                            "server_waiting": round((now[3] - before[3]) / span, 3),
                            "consumers_busy": round((now[2] - before[2]) / span, 3),
                            "backlog": backlog,
                        }
                    )
                before = now
                self._stop.wait(self.period_s)
        finally:
            client.close()

    def summary(self) -> dict[str, Any]:
        """Averages over the samples with work waiting, when each stage last had some, and the
        rows themselves. CPU is per core: 1.0 is one core busy for the whole sample."""
        active = [row for row in self.rows if any(row["backlog"].values())]

        def mean(name: str) -> float:
            return round(sum(row[name] for row in active) / len(active), 3) if active else 0.0

        last_work = {
            stage: max((row["t"] for row in self.rows if row["backlog"][stage]), default=0.0)
            for stage in STAGES
        }
        return {
            "period_s": self.period_s,
            "server_busy": mean("server_busy"),
            "server_waiting_for_a_core": mean("server_waiting"),
            "consumers_busy": mean("consumers_busy"),
            "stage_last_backlog_s": last_work,
            "rows": self.rows,
        }
