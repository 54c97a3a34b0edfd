"""The deployment files run for real: the Procfile under honcho, deploy/supervisor under
supervisord (and its own config parser), deploy/systemd through `systemd-analyze verify`.

The files name production paths (/opt/streamproc, /var/lib/streamproc, user streamproc); the tests
swap only those for this checkout's venv and a temp dir, and keep everything else as shipped.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from supervisor.datatypes import RestartUnconditionally
from supervisor.options import ServerOptions

from streamproc.keys import STAGES
from tests.helpers import HOST, REPO_ROOT, free_port
from tests.proc_support import (
    HAS_PROC,
    descendants,
    kill_leftovers,
    wait_api_healthy,
    wait_gone,
)
from tests.support import cli, export, wait_consumers_registered

VENV_BIN = Path(sys.executable).parent
DEPLOY = REPO_ROOT / "deploy"
PROD_STREAMPROC = "/opt/streamproc/.venv/bin/streamproc"
GRACE_S = 4.0  # STREAMPROC_SHUTDOWN_GRACE_S's default, also set in the shipped files
HONCHO_KILL_WAIT_S = 5.0  # honcho SIGKILLs what still runs this long after its SIGTERM


def _run_sample(env: dict[str, str]) -> None:
    cli(["ingest", str(REPO_ROOT / "sample.csv")], env)
    cli(["wait", "--timeout", "60"], env, timeout=90)
    assert {o["state"] for o in export(env).values()} == {"completed"}


# --- Procfile / honcho -------------------------------------------------------------------------


def _honcho_port_base(roles: int) -> int:
    """A base port P with P, P+100, … free: honcho gives the n-th role PORT=P+100n."""
    for _ in range(50):
        base = free_port()
        if base + 100 * roles > 65535:
            continue
        try:
            for n in range(roles):
                with socket.socket() as sock:
                    sock.bind((HOST, base + 100 * n))
        except OSError:
            continue
        return base
    raise RuntimeError("no free honcho port base")


def test_procfile_has_one_long_running_line_per_role() -> None:
    lines = (REPO_ROOT / "Procfile").read_text().splitlines()
    roles = dict(line.split(":", 1) for line in lines)
    assert list(roles) == [*STAGES, "api"]
    for stage in STAGES:
        # exec: the runner's SIGTERM must reach streamproc, not a shell left in between.
        assert roles[stage].strip().endswith(f"exec streamproc consume --stage {stage}")
    assert roles["api"].strip().startswith("exec streamproc api")
    assert "ingest" not in "".join(roles.values())  # one-shot commands would stop honcho


@pytest.mark.skipif(not HAS_PROC, reason="reads process trees from /proc")
def test_procfile_runs_under_honcho_and_stops_within_its_kill_wait(
    sp_env: dict[str, str], tmp_path: Path
) -> None:
    base = _honcho_port_base(len(STAGES) + 1)
    api_port = base + 100 * len(STAGES)  # api is the last line
    env = dict(
        sp_env,
        PATH=f"{VENV_BIN}{os.pathsep}{sp_env['PATH']}",
        STREAMPROC_PAYMENT_SUCCESS_RATE="1.0",
        STREAMPROC_API_HOST=HOST,  # loopback only in tests (platforms need the default 0.0.0.0)
    )
    (tmp_path / "empty.env").write_text("")
    log = tmp_path / "honcho.log"
    args = [
        "-f",
        str(REPO_ROOT / "Procfile"),
        "-d",
        str(REPO_ROOT),
        "-e",
        str(tmp_path / "empty.env"),
    ]
    with log.open("wb") as out:
        honcho = subprocess.Popen(
            [str(VENV_BIN / "honcho"), *args, "start", "-p", str(base)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a terminal job of its own: Ctrl-C is SIGINT to the group
        )
    seen: set[int] = set()
    try:
        for stage in STAGES:
            wait_consumers_registered(env, stage, 1, log.read_text)
        wait_api_healthy(api_port, honcho, lambda: log.read_text()[-4000:])
        _run_sample(env)
        seen = descendants(honcho.pid)
        os.killpg(honcho.pid, signal.SIGINT)
        started = time.monotonic()
        honcho.wait(timeout=HONCHO_KILL_WAIT_S + 10)
        output = log.read_text()
        assert time.monotonic() - started < HONCHO_KILL_WAIT_S, output
        assert "SIGKILL" not in output, output
        stopped = dict(re.findall(r"\| (\w+)\.1 stopped \(rc=(-?\d+)\)", output))
        assert stopped == {role: "0" for role in [*STAGES, "api"]}, output
        assert wait_gone(seen, 2) == set()
    finally:
        if honcho.poll() is None:
            os.killpg(honcho.pid, signal.SIGTERM)
            honcho.wait(timeout=15)
        kill_leftovers(seen)


# --- supervisord ------------------------------------------------------------------------------


def _supervisor_conf(tmp_path: Path, replacements: dict[str, str]) -> Path:
    """deploy/supervisor/streamproc.conf with the production paths swapped, and a main config
    that includes it, as /etc/supervisor/supervisord.conf includes conf.d/*.conf."""
    text = (DEPLOY / "supervisor" / "streamproc.conf").read_text()
    logs = tmp_path / "log"
    logs.mkdir(exist_ok=True)
    swaps = {
        PROD_STREAMPROC: str(VENV_BIN / "streamproc"),
        "/var/log/streamproc": str(logs),
        "/var/lib/streamproc": str(tmp_path),
        "user=streamproc\n": "",  # supervisord runs as the test's user
        **replacements,
    }
    for old, new in swaps.items():
        assert old in text, old
        text = text.replace(old, new)
    included = tmp_path / "streamproc.conf"
    included.write_text(text)
    main = tmp_path / "supervisord.conf"
    main.write_text(
        "[supervisord]\n"
        f"logfile={tmp_path / 'supervisord.log'}\n"
        f"pidfile={tmp_path / 'supervisord.pid'}\n"
        "loglevel=info\n"
        f"[include]\nfiles={included}\n"
    )
    return main


def test_supervisord_reads_every_program_as_intended(tmp_path: Path) -> None:
    options = ServerOptions()
    options.realize(args=["-c", str(_supervisor_conf(tmp_path, {}))])
    (group,) = options.process_group_configs
    assert group.name == "streamproc"
    programs = {p.name: p for p in group.process_configs}
    consumers = [f"streamproc-{s}" for s in STAGES if s != "payment"]
    payments = ["streamproc-payment-1", "streamproc-payment-2"]
    assert sorted(programs) == sorted([*consumers, *payments, "streamproc-api"])
    ports = []
    for name, program in programs.items():
        assert program.autorestart is RestartUnconditionally
        assert program.stopsignal == signal.SIGTERM
        grace_s = float(program.environment["STREAMPROC_SHUTDOWN_GRACE_S"])
        assert grace_s == GRACE_S and program.stopwaitsecs > grace_s + 3
        assert program.killasgroup and not program.stopasgroup, name  # one SIGTERM per process
        assert program.redirect_stderr and program.stdout_logfile == str(
            tmp_path / "log" / f"{name}.log"
        )
        assert program.environment["STREAMPROC_LOG_FORMAT"] == "json"
        assert program.environment["STREAMPROC_REDIS_URL"].startswith("redis://")
        if name == "streamproc-api":
            assert (
                " api " in program.command and "STREAMPROC_METRICS_PORT" not in program.environment
            )
        else:
            stage = name.split("-")[1]
            assert program.command.endswith(f"consume --stage {stage}"), program.command
            ports.append(int(program.environment["STREAMPROC_METRICS_PORT"]))
    assert len(set(ports)) == len(ports) == 7  # every consumer its own metrics port
    assert programs["streamproc-payment-2"].environment["STREAMPROC_METRICS_PORT"] == "9412"


@pytest.mark.skipif(not HAS_PROC, reason="reads process trees from /proc")
def test_supervisord_runs_every_program_and_stops_them_cleanly(
    sp_env: dict[str, str], tmp_path: Path
) -> None:
    api_port = free_port()
    conf = (DEPLOY / "supervisor" / "streamproc.conf").read_text()
    swaps = {
        "redis://127.0.0.1:6379/0": sp_env["STREAMPROC_REDIS_URL"],
        "--port 8000": f"--port {api_port}",
        "--workers 2": "--workers 1",
    }
    # The metrics ports are fixed in the file; here each consumer gets none (0).
    swaps |= {
        m: 'STREAMPROC_METRICS_PORT="0"'
        for m in set(re.findall(r'STREAMPROC_METRICS_PORT="[^"]+"', conf))
    }
    main = _supervisor_conf(tmp_path, swaps)
    env = dict(sp_env, STREAMPROC_PAYMENT_SUCCESS_RATE="1.0")
    # supervisord passes its own environment on, under the programs' environment= values.
    log = tmp_path / "supervisord.log"
    daemon = subprocess.Popen(
        [str(VENV_BIN / "supervisord"), "-n", "-c", str(main)],
        env=dict(env, STREAMPROC_PAYMENT_SUCCESS_RATE="1.0"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    seen: set[int] = set()
    try:
        wait_consumers_registered(env, "payment", 2, log.read_text)
        for stage in STAGES:
            wait_consumers_registered(env, stage, 1, log.read_text)
        wait_api_healthy(api_port, daemon, lambda: log.read_text()[-4000:])
        _run_sample(env)
        seen = descendants(daemon.pid)
        assert len(seen) == 8, seen
        daemon.send_signal(signal.SIGTERM)  # what `systemctl stop supervisor` does
        daemon.wait(timeout=20)
        text = log.read_text()
        stopped = dict(re.findall(r"stopped: (\S+) \((.+?)\)", text))
        names = [f"streamproc-{s}" for s in STAGES if s != "payment"]
        names += ["streamproc-payment-1", "streamproc-payment-2", "streamproc-api"]
        assert stopped == dict.fromkeys(names, "exit status 0"), text
        assert wait_gone(seen, 2) == set()
        # Each program's output went to its own log file, as JSON lines.
        payment_log = (tmp_path / "log" / "streamproc-payment-2.log").read_text()
        assert '"logger":"streamproc.worker"' in payment_log
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=20)
        kill_leftovers(seen)


# --- systemd ----------------------------------------------------------------------------------

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
UNITS = ("streamproc-consumer@.service", "streamproc-api.service", "streamproc.target")


def _unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A unit file's sections as (key, value) lists (keys may repeat, like Wants=)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
        else:
            key, _, value = line.partition("=")
            current.append((key.strip(), value.strip()))
    return sections


def _values(section: list[tuple[str, str]], key: str) -> list[str]:
    return [value for k, value in section if k == key]


def _env_file() -> dict[str, str]:
    text = (DEPLOY / "systemd" / "streamproc.env").read_text()
    pairs = (line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return dict(pairs)


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_systemd_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    env_file = tmp_path / "streamproc.env"
    shutil.copy(DEPLOY / "systemd" / "streamproc.env", env_file)
    for name in UNITS:
        text = (DEPLOY / "systemd" / name).read_text()
        text = text.replace(PROD_STREAMPROC, str(VENV_BIN / "streamproc"))
        text = text.replace("/etc/streamproc/streamproc.env", str(env_file))
        (tmp_path / name).write_text(text)
    # Instances are loaded from the template in the same directory.
    units = ["streamproc.target", "streamproc-api.service"]
    units += ["streamproc-consumer@reserve.service", "streamproc-consumer@payment.2.service"]
    done = subprocess.run(
        [str(SYSTEMD_ANALYZE), "verify", "--man=no", *(str(tmp_path / u) for u in units)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # verify exits 0 on settings it ignores; it must have nothing at all to say.
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_systemd_units_restart_on_failure_and_stop_with_sigterm_within_the_timeout() -> None:
    grace_s = float(_env_file()["STREAMPROC_SHUTDOWN_GRACE_S"])
    assert grace_s == GRACE_S
    for name in UNITS[:2]:
        unit = _unit(DEPLOY / "systemd" / name)
        service = unit["Service"]
        assert _values(service, "Restart") == ["on-failure"]
        assert _values(service, "KillSignal") == ["SIGTERM"]
        assert _values(service, "KillMode") == ["mixed"]  # the main process alone gets SIGTERM
        (timeout,) = _values(service, "TimeoutStopSec")
        assert float(timeout) > grace_s + 3
        assert _values(service, "EnvironmentFile") == ["/etc/streamproc/streamproc.env"]
        assert _values(service, "StandardOutput") == ["journal"]
        assert _values(unit["Unit"], "PartOf") == ["streamproc.target"]
        assert _values(unit["Install"], "WantedBy") == ["streamproc.target"]
    target = _unit(DEPLOY / "systemd" / "streamproc.target")
    wanted = " ".join(_values(target["Unit"], "Wants")).split()
    stages = {w.split("@")[1].removesuffix(".service").split(".")[0] for w in wanted if "@" in w}
    assert stages == set(STAGES)
    assert "streamproc-api.service" in wanted
    assert "streamproc-consumer@payment.2.service" in wanted


@pytest.mark.parametrize(
    ("instance", "stage"),
    [("reserve", "reserve"), ("payment.2", "payment"), ("snapshot.10", "snapshot")],
)
def test_consumer_template_runs_the_stage_its_instance_names(
    tmp_path: Path, instance: str, stage: str
) -> None:
    (exec_start,) = _values(_unit(DEPLOY / "systemd" / UNITS[0])["Service"], "ExecStart")
    # What systemd does to the line: specifiers (%% is %, %i the instance), then $$ is $.
    line = re.sub(r"%(.)", lambda m: {"%": "%", "i": instance}[m.group(1)], exec_start)
    line = line.replace("$$", "$")
    fake = tmp_path / "streamproc"
    fake.write_text('#!/bin/sh\necho "$@"\n')
    fake.chmod(0o755)
    argv = [arg.replace(PROD_STREAMPROC, str(fake)) for arg in shlex.split(line)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=True)
    assert done.stdout == f"consume --stage {stage}\n"
