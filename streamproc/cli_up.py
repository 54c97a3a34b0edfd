"""`streamproc up`: every stage and the API as supervised child processes (SPEC §8)."""

from __future__ import annotations

import logging
import os
import signal
import sys

import click

from streamproc.cli import Env, fail, handle_errors, pass_env

log = logging.getLogger("streamproc.up")


@click.command()
@click.option(
    "--scale",
    multiple=True,
    metavar="STAGE=N",
    help="Processes of one stage, e.g. payment=4 (repeatable; default 1 of each, 0 for none).",
)
@click.option("--host", default="127.0.0.1", help="Address the API binds.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, help="Port the API binds.")
@click.option("--no-api", is_flag=True, help="Run the stages only.")
@click.option(
    "--metrics-port-base",
    type=click.IntRange(0, 65535),
    default=9400,
    help="Consumer i serves Prometheus metrics on BASE+i (0: off).",
)
@pass_env
@handle_errors
def up(
    env: Env, scale: tuple[str, ...], host: str, port: int, no_api: bool, metrics_port_base: int
) -> None:
    """Run every stage (N processes each) and the API; restart a child that dies; Ctrl-C or
    SIGTERM stops them all (a second Ctrl-C kills them at once)."""
    from streamproc.supervisor import STOP_SIGNALS, OutputSink, Supervisor
    from streamproc.up import (
        DEFAULT_METRICS_HOST,
        STOP_MARGIN_S,
        TARGETS_FILE,
        UpPlan,
        banner,
        check_ports_free,
        child_specs,
        parse_scale,
        targets,
        write_targets,
    )

    # Until the supervisor takes over the signals no child runs: a stop is a plain, clean exit.
    for signum in STOP_SIGNALS:
        signal.signal(signum, _exit_cleanly)
    plan = UpPlan(
        scale=parse_scale(scale),
        api_host=None if no_api else host,
        api_port=port,
        metrics_port_base=metrics_port_base,
        metrics_host=os.environ.get("STREAMPROC_METRICS_HOST", "").strip() or DEFAULT_METRICS_HOST,
    )
    url = env.url
    env.client().close()  # fail fast and clearly when the server is not there
    check_ports_free(plan)
    targets_path = env.settings.home_dir / TARGETS_FILE
    write_targets(targets_path, targets(plan))
    _print_banner(
        env, banner(plan, env.server_description, targets_path, not env.settings.redis_url)
    )
    specs = child_specs(plan, url, os.environ)
    supervisor = Supervisor(
        specs,
        OutputSink(sys.stdout, [spec.name for spec in specs], env.log_config.json),
        stop_timeout_s=env.settings.shutdown_grace_s + STOP_MARGIN_S,
    )
    import asyncio  # here: every command registers at start-up, and `ingest` does without it

    code = asyncio.run(supervisor.run())
    if supervisor.gave_up is not None:
        fail(supervisor.gave_up, code)
    sys.exit(code)


def _exit_cleanly(signum: int, frame: object) -> None:
    sys.exit(0)


def _print_banner(env: Env, info: dict[str, object]) -> None:
    if env.log_config.json:
        log.info("streamproc up: starting %s", info["processes"], extra=info)
        return
    width = max(len(name) for name in info)
    click.echo(f"streamproc up: {info['processes']}")
    for name, value in info.items():
        if name != "processes":
            click.echo(f"  {name.replace('_', ' '):<{width}}  {value}")
    click.echo("  Ctrl-C stops everything (a second Ctrl-C kills at once)")


def register(main: click.Group) -> None:
    """Add `up` to the top-level group."""
    main.add_command(up)
