"""What `streamproc up` runs: a child per stage process and one for the API, each consumer's
metrics port, the Prometheus file_sd targets file and the start-up banner."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from streamproc.errors import ConfigError
from streamproc.keys import STAGES
from streamproc.supervisor import ChildSpec

API_JOB = "streamproc-api"
CONSUMER_JOB = "streamproc-consumers"
TARGETS_FILE = "prometheus-targets.json"
MAX_SCALE = 64
DEFAULT_METRICS_HOST = "127.0.0.1"
# Consumers stop within STREAMPROC_SHUTDOWN_GRACE_S; this covers closing and interpreter exit.
STOP_MARGIN_S = 3.0
_WILDCARDS = {"", "0.0.0.0", "::", "[::]"}  # noqa: S104 (recognised, never bound)


def parse_scale(values: Sequence[str]) -> dict[str, int]:
    """Processes per stage: one each, changed by STAGE=N values (N from 0 to 64)."""
    scale = dict.fromkeys(STAGES, 1)
    seen: set[str] = set()
    for value in values:
        stage, sep, count = value.partition("=")
        stage = stage.strip()
        if not sep or stage not in STAGES:
            raise ConfigError(
                f"--scale {value!r}: use STAGE=N with STAGE one of {', '.join(STAGES)}"
            )
        if stage in seen:
            raise ConfigError(f"--scale: {stage} given twice")
        try:
            scale[stage] = int(count)
        except ValueError:
            raise ConfigError(f"--scale {value!r}: N must be a whole number") from None
        if not 0 <= scale[stage] <= MAX_SCALE:
            raise ConfigError(f"--scale {value!r}: N must be between 0 and {MAX_SCALE}")
        seen.add(stage)
    return scale


def reachable_host(host: str) -> str:
    """The address a local client uses for a server bound to host (loopback for wildcards)."""
    if host in _WILDCARDS:
        return "127.0.0.1"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


@dataclass(frozen=True, slots=True)
class Consumer:
    """One consumer child: its label, stage and metrics port (None: no metrics endpoint)."""

    name: str
    stage: str
    metrics_port: int | None


@dataclass(frozen=True, slots=True)
class UpPlan:
    """Everything `up` starts: consumers per stage, the API's address and the metrics ports."""

    scale: Mapping[str, int]
    api_host: str | None  # None: no API child (--no-api)
    api_port: int
    metrics_port_base: int  # 0: consumers serve no metrics
    metrics_host: str = DEFAULT_METRICS_HOST

    def __post_init__(self) -> None:
        """Refuse a plan that runs nothing or runs past the last port."""
        if not self.consumers() and self.api_host is None:
            raise ConfigError("nothing to run: every stage is scaled to 0 and --no-api is set")
        last = self.metrics_port_base + len(self.consumers()) - 1
        if self.metrics_port_base and last > 65535:
            raise ConfigError(f"--metrics-port-base {self.metrics_port_base}: ports pass 65535")

    def consumers(self) -> list[Consumer]:
        """Every consumer child in start order; child i serves metrics on base + i."""
        found: list[Consumer] = []
        for stage in STAGES:
            for number in range(1, self.scale.get(stage, 0) + 1):
                port = self.metrics_port_base + len(found) if self.metrics_port_base else None
                found.append(Consumer(f"{stage}.{number}", stage, port))
        return found

    @property
    def api_address(self) -> str | None:
        """host:port a local client reaches the API at."""
        if self.api_host is None:
            return None
        return f"{reachable_host(self.api_host)}:{self.api_port}"

    def listen_addresses(self) -> list[tuple[str, int]]:
        """Every (host, port) a child will bind."""
        found = [(self.metrics_host, c.metrics_port) for c in self.consumers() if c.metrics_port]
        if self.api_host is not None:
            found.append((self.api_host, self.api_port))
        return found


def child_specs(plan: UpPlan, redis_url: str, base_env: Mapping[str, str]) -> list[ChildSpec]:
    """The command line and environment of each child (the API last)."""
    env = dict(base_env, STREAMPROC_REDIS_URL=redis_url, PYTHONUNBUFFERED="1")
    command = (sys.executable, "-m", "streamproc")
    specs = [
        ChildSpec(
            consumer.name,
            (*command, "consume", "--stage", consumer.stage),
            # The consumer's own --metrics-port reads this; 0 (off) also overrides a value the
            # user exported for single processes, which would collide across children.
            dict(env, STREAMPROC_METRICS_PORT=str(consumer.metrics_port or 0)),
        )
        for consumer in plan.consumers()
    ]
    if plan.api_host is not None:
        api_env = {k: v for k, v in env.items() if k != "STREAMPROC_METRICS_PORT"}
        specs.append(
            ChildSpec(
                "api",
                (*command, "api", "--host", plan.api_host, "--port", str(plan.api_port)),
                api_env,
            )
        )
    return specs


def check_ports_free(plan: UpPlan) -> None:
    """Fail before starting anything when a port a child needs is taken."""
    for host, port in plan.listen_addresses():
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            # As uvicorn and prometheus_client bind: a port in TIME_WAIT is usable.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host.strip("[]"), port))
            except OSError as exc:
                raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def targets(plan: UpPlan) -> list[dict[str, object]]:
    """Prometheus file_sd target groups: the API, then the consumers of each stage."""
    groups: list[dict[str, object]] = []
    if plan.api_address is not None:
        groups.append({"targets": [plan.api_address], "labels": {"job": API_JOB}})
    host = reachable_host(plan.metrics_host)
    for stage in STAGES:
        ports = [c.metrics_port for c in plan.consumers() if c.stage == stage and c.metrics_port]
        if ports:
            groups.append(
                {
                    "targets": [f"{host}:{port}" for port in ports],
                    "labels": {"job": CONSUMER_JOB, "stage": stage},
                }
            )
    return groups


def write_targets(path: Path, groups: list[dict[str, object]]) -> None:
    """Write the targets file atomically (Prometheus re-reads it whenever it changes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(groups, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)  # Prometheus never reads a half-written file
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def banner(plan: UpPlan, server: str, targets_path: Path, embedded: bool) -> dict[str, object]:
    """What a user needs once everything is up: the server, URLs and metrics ports."""
    consumers = plan.consumers()
    counts = " ".join(f"{stage}={n}" for stage, n in plan.scale.items() if n)
    info: dict[str, object] = {
        "server": server,
        "processes": counts + (" api" if plan.api_address else ""),
    }
    if plan.api_address is not None:
        base = f"http://{plan.api_address}"
        info.update(api=f"{base}/api", dashboard=f"{base}/dashboard", metrics=f"{base}/metrics")
    ports = [c.metrics_port for c in consumers if c.metrics_port]
    if ports:
        info["consumer_metrics"] = f"{reachable_host(plan.metrics_host)}:{ports[0]}-{ports[-1]}"
    info["targets_file"] = str(targets_path)
    if embedded:
        info["note"] = "the embedded server keeps running; `streamproc server stop` stops it"
    return info
