"""`streamproc up` as a user runs it: real child processes, real signals, the session's server.

`up` is started in its own session, as a shell starts a foreground job, so a "Ctrl-C" here is
SIGINT to its whole process group, which is what a terminal sends.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
from pathlib import Path

import pytest

from streamproc.keys import STAGES
from tests.helpers import HOST, REPO_ROOT, free_port
from tests.proc_support import (
    GRACE_S,
    HAS_PROC,
    STOP_MARGIN_S,
    Up,
    alive,
    free_port_block,
    wait_gone,
)
from tests.support import KEYS, cli, export, one_line, write_orders

pytestmark = pytest.mark.skipif(not HAS_PROC, reason="reads process trees from /proc")


@pytest.fixture
def up_env(sp_env: dict[str, str]) -> dict[str, str]:
    """Every payment succeeds, so every order must end completed."""
    return dict(sp_env, STREAMPROC_PAYMENT_SUCCESS_RATE="1.0")


def test_up_runs_every_stage_restarts_a_killed_consumer_and_stops_on_ctrl_c(
    up_env: dict[str, str], tmp_path: Path
) -> None:
    api_port = free_port()
    base = free_port_block(7)
    up = Up(
        up_env,
        tmp_path / "up.log",
        "--scale", "payment=2",
        "--port", str(api_port),
        "--metrics-port-base", str(base),
    )  # fmt: skip
    scale = dict.fromkeys(STAGES, 1) | {"payment": 2}
    try:
        up.wait_ready(scale, api_port)
        tree = up.tree()
        assert len(tree) == 8, tree  # 7 consumers and the API, nothing else
        for pid in tree:
            # A process group of its own (Ctrl-C reaches `up` alone), in `up`'s session: one
            # CPU group with it under autogroups, not one each beside the server's.
            assert os.getpgid(pid) == pid
            assert os.getsid(pid) == os.getsid(up.proc.pid)
        for stage, count in scale.items():
            assert len(up.stage_pids(stage)) == count, (stage, tree)
        # Each consumer got its own metrics port, in stage order; the API none.
        ports = {}
        for pid, cmd in tree.items():
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            values = [e.split(b"=", 1)[1] for e in environ if e.startswith(b"STREAMPROC_METRICS_")]
            ports[pid] = int(values[0]) if values else None
            assert (values == []) == (" api " in cmd), (cmd, values)
        assert sorted(p for p in ports.values() if p is not None) == list(range(base, base + 7))

        targets_path = Path(up_env["STREAMPROC_HOME"]) / "prometheus-targets.json"
        assert json.loads(targets_path.read_text()) == [
            {"targets": [f"{HOST}:{api_port}"], "labels": {"job": "streamproc-api"}},
            _consumer_targets("reserve", base),
            _consumer_targets("payment", base + 1, base + 2),
            _consumer_targets("finalize", base + 3),
            _consumer_targets("rollback", base + 4),
            _consumer_targets("notify", base + 5),
            _consumer_targets("snapshot", base + 6),
        ]

        cli(["ingest", str(REPO_ROOT / "sample.csv")], up_env)
        cli(["wait", "--timeout", "60"], up_env, timeout=90)
        assert {o["state"] for o in export(up_env).values()} == {"completed"}

        # SIGKILL one payment consumer: up starts another in its place.
        before = up.stage_pids("payment")
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while True:
            now = up.stage_pids("payment")
            if len(now) == 2 and victim not in now:
                break
            assert time.monotonic() < deadline, f"payment never restarted: {now}\n{up.log()}"
            time.sleep(0.05)
        (replacement,) = now - before
        assert re.search(r"payment\.\d exited unexpectedly \(killed by SIGKILL\)", up.log())
        # The replacement consumes: it joins the payment group under its own name...
        name = f"{socket.gethostname()}-{replacement}"
        _wait_for(lambda: name in _group_consumers(up_env, "payment"), 15, up.log)
        # ...and the pipeline keeps going.
        more = [one_line(f"UP-{n}", "SKU-UP", 1) for n in range(20)]
        cli(["ingest", str(write_orders(tmp_path / "more.csv", more))], up_env)
        cli(["wait", "--timeout", "60"], up_env, timeout=90)
        orders = export(up_env)
        assert len(orders) == 30
        assert {o["state"] for o in orders.values()} == {"completed"}

        tree = up.tree()
        up.ctrl_c()
        assert up.wait(GRACE_S + STOP_MARGIN_S + 5) == 0, up.log()
        assert wait_gone(tree, 2) == set(), f"left behind: {tree}"
        log = up.log()
        # One signal reached each child (their own process groups): all stopped cleanly.
        names = ["api", "reserve.1", "payment.1", "payment.2", "finalize.1", "rollback.1"]
        for child in [*names, "notify.1", "snapshot.1"]:
            assert f"{child} stopped (exit 0)" in log, log
        # Output is labelled with the child that wrote it.
        assert re.search(r"^payment\.2 +\| .*running stages payment$", log, re.MULTILINE), log
        assert re.search(r"^api +\| .*Application startup complete", log, re.MULTILINE), log
    finally:
        up.close()


def _consumer_targets(stage: str, *ports: int) -> dict[str, object]:
    return {
        "targets": [f"{HOST}:{port}" for port in ports],
        "labels": {"job": "streamproc-consumers", "stage": stage},
    }


def _group_consumers(env: dict[str, str], stage: str) -> set[str]:
    import redis

    with redis.Redis.from_url(env["STREAMPROC_REDIS_URL"], decode_responses=True) as client:
        return {c["name"] for c in client.xinfo_consumers(KEYS.stream(stage), stage)}


def test_sigkill_of_up_takes_its_children_along(up_env: dict[str, str], tmp_path: Path) -> None:
    up = Up(up_env, tmp_path / "up.log", "--no-api", "--metrics-port-base", "0")
    try:
        up.wait_ready(dict.fromkeys(STAGES, 1), None)
        tree = up.tree()
        assert len(tree) == len(STAGES)
        # No API and no consumer metrics: nothing for Prometheus to scrape.
        targets_path = Path(up_env["STREAMPROC_HOME"]) / "prometheus-targets.json"
        assert json.loads(targets_path.read_text()) == []
        os.kill(up.proc.pid, signal.SIGKILL)
        assert up.wait(5) == -signal.SIGKILL
        # PR_SET_PDEATHSIG: the kernel sends each child SIGTERM; they stop within the grace.
        assert wait_gone(tree, GRACE_S + STOP_MARGIN_S) == set(), tree
    finally:
        up.close()


def test_a_child_that_ignores_the_stop_is_killed_after_the_grace(
    up_env: dict[str, str], tmp_path: Path
) -> None:
    # A short read block, so a consumer notices the stop well within the short grace.
    env = dict(up_env, STREAMPROC_SHUTDOWN_GRACE_S="1", STREAMPROC_BLOCK_MS="100")
    scale = [f"--scale={stage}=0" for stage in STAGES if stage not in ("reserve", "payment")]
    up = Up(env, tmp_path / "up.log", "--no-api", "--metrics-port-base", "0", *scale)
    try:
        up.wait_ready({"reserve": 1, "payment": 1}, None)
        tree = up.tree()
        (stuck,) = up.stage_pids("payment")
        os.kill(stuck, signal.SIGSTOP)  # it cannot act on SIGTERM any more
        started = time.monotonic()
        up.ctrl_c()
        assert up.wait(1 + STOP_MARGIN_S + 5) == 0, up.log()
        waited_s = time.monotonic() - started
        assert waited_s > 1 + STOP_MARGIN_S - 0.5, waited_s  # it did wait for the grace first
        assert wait_gone(tree, 2) == set()
        log = up.log()
        assert "still running after 4 s, killing: payment.1" in log, log
        assert "payment.1 stopped (killed by SIGKILL)" in log
        assert "reserve.1 stopped (exit 0)" in log
    finally:
        up.close()


def test_a_second_ctrl_c_kills_everything_at_once(up_env: dict[str, str], tmp_path: Path) -> None:
    # A slow gateway keeps a payment in flight, so the first Ctrl-C waits for it.
    env = dict(up_env, STREAMPROC_PAYMENT_LATENCY_MS="60000", STREAMPROC_SHUTDOWN_GRACE_S="60")
    up = Up(env, tmp_path / "up.log", "--no-api", "--metrics-port-base", "0")
    try:
        up.wait_ready(dict.fromkeys(STAGES, 1), None)
        tree = up.tree()
        cli(["ingest", str(REPO_ROOT / "sample.csv")], env)
        _wait_for(lambda: "payment" in _stages_with_pending(env), 20, up.log)
        up.ctrl_c()
        time.sleep(1.5)
        assert up.proc.poll() is None, "up did not wait for the payment in flight"
        assert alive(next(iter(up.stage_pids("payment"))))
        started = time.monotonic()
        up.ctrl_c()
        assert up.wait(5) == 130, up.log()
        assert time.monotonic() - started < 3
        assert wait_gone(tree, 2) == set()
        assert "SIGINT again: killing every process now" in up.log()
    finally:
        up.close()


def _stages_with_pending(env: dict[str, str]) -> set[str]:
    import redis

    with redis.Redis.from_url(env["STREAMPROC_REDIS_URL"]) as client:
        found = set()
        for stage in STAGES:
            for stream in KEYS.sources(stage):
                try:
                    if client.xpending(stream, stage)["pending"]:
                        found.add(stage)
                except redis.ResponseError:
                    pass
        return found


def _wait_for(check: object, timeout_s: float, log: object) -> None:
    assert callable(check) and callable(log)
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, log()
        time.sleep(0.05)


def test_a_crash_looping_child_makes_up_give_up(up_env: dict[str, str], tmp_path: Path) -> None:
    # Every consumer refuses this setting at once (exit 2): a crash loop from the first start.
    env = dict(up_env, STREAMPROC_CONSUME_CONCURRENCY="0")
    scale = [f"--scale={stage}=0" for stage in STAGES if stage != "reserve"]
    up = Up(env, tmp_path / "up.log", "--no-api", "--metrics-port-base", "0", *scale)
    try:
        assert up.wait(40) == 1, up.log()
        log = up.log()
        # Restarted after a doubling delay, then given up on, with the reason last.
        delays = re.findall(
            r"reserve\.1 exited unexpectedly \(exit 2\) .* restarting in (\S+) s", log
        )
        assert delays == ["0.5", "1", "2", "4"], log
        assert "Invalid value for '--concurrency'" in log
        last = log.strip().splitlines()[-1]
        assert last == (
            "streamproc: reserve.1 exited 5 times in a row within 10 s of starting (last: exit 2);"
            " gave up and stopped everything"
        ), log
    finally:
        up.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scale", "pay=2"], "--scale 'pay=2': use STAGE=N with STAGE one of reserve, payment"),
        (["--scale", "payment"], "--scale 'payment': use STAGE=N"),
        (["--scale", "payment=x"], "--scale 'payment=x': N must be a whole number"),
        (["--scale", "payment=65"], "--scale 'payment=65': N must be between 0 and 64"),
        (["--scale", "payment=2", "--scale", "payment=3"], "--scale: payment given twice"),
        ([*(f"--scale={s}=0" for s in STAGES), "--no-api"], "nothing to run"),
        (["--metrics-port-base", "65531"], "--metrics-port-base 65531: ports pass 65535"),
    ],
)
def test_up_refuses_bad_options(
    up_env: dict[str, str], args: list[str], message: str, tmp_path: Path
) -> None:
    done = cli(["up", *args], up_env, check=False)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert not (Path(up_env["STREAMPROC_HOME"]) / "prometheus-targets.json").exists()


def test_up_refuses_a_port_in_use_before_starting_anything(up_env: dict[str, str]) -> None:
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = cli(["up", "--port", str(port), "--metrics-port-base", "0"], up_env, check=False)
    assert done.returncode == 2, done.stderr
    assert f"cannot listen on {HOST}:{port}: Address already in use" in done.stderr
    assert "started (pid" not in done.stderr
