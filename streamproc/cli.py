"""The `streamproc` command line: parses options and delegates; every option also reads
STREAMPROC_<COMMAND>_<OPTION> from the environment (click's auto_envvar_prefix)."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
import msgspec

from streamproc import __version__
from streamproc.address import (
    CONNECT_TIMEOUT_S,
    SOCKET_TIMEOUT_S,
    describe_connection_error,
    resolve_redis_url,
)
from streamproc.errors import ConfigError, InputFileError, ServerError, StreamprocError
from streamproc.keys import Keys
from streamproc.logs import LogConfig, dict_config, json_enabled, setup_logging
from streamproc.settings import Settings
from streamproc.wire import WireError

if TYPE_CHECKING:
    import redis

    from streamproc.wire import Wire

EXIT_OK, EXIT_SOME_REJECTED, EXIT_USAGE, EXIT_SERVER = 0, 1, 2, 3
F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("streamproc.cli")


class Env:
    """Per-invocation state: the settings and a lazily resolved server."""

    def __init__(self, settings: Settings, log_config: LogConfig | None = None) -> None:
        self.settings = settings
        self.log_config = log_config or LogConfig()
        self.keys = Keys(settings.namespace)
        self._url: str | None = None
        self.server_description = ""

    @property
    def url(self) -> str:
        """The server URL, starting the embedded server when none is configured."""
        if self._url is None:
            self._url, self.server_description = resolve_redis_url(self.settings)
            notice(f"using {self.server_description}")
        return self._url

    def client(self) -> redis.Redis:
        """A blocking client, checked with PING so failures surface before any work."""
        import redis  # here, not at the top: `ingest` does without it (streamproc.wire)

        from streamproc.connection import sync_client

        client = sync_client(self.url, retries=1)
        try:
            client.ping()
        except redis.RedisError as exc:
            raise describe_connection_error(self.url, exc) from None
        return client

    def wire(self) -> Wire | None:
        """A lean connection (streamproc.wire), checked with PING; None for a URL it does not
        cover (TLS, client options), which needs `client()`."""
        from streamproc.wire import connect

        try:
            wire = connect(self.url, CONNECT_TIMEOUT_S, SOCKET_TIMEOUT_S)
            if wire is not None:
                wire.call("PING")
        except WireError as exc:
            raise describe_connection_error(self.url, exc) from None
        return wire


def notice(message: str) -> None:
    """A one-line note on stderr (a log record when logs are JSON, so every line parses)."""
    if json_enabled():
        log.info("%s", message)
    else:
        click.echo(f"streamproc: {message}", err=True)


def fail(message: str, code: int) -> None:
    """Print a one-line error and exit."""
    if json_enabled():
        log.error("%s", message)
    else:
        click.echo(f"streamproc: {message}", err=True)
    sys.exit(code)


def handle_errors(func: F) -> F:
    """Turn expected failures into a one-line message and an exit code, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        env: Env | None = click.get_current_context().find_object(Env)
        try:
            return func(*args, **kwargs)
        except (InputFileError, ConfigError) as exc:
            fail(str(exc), EXIT_USAGE)
        except ServerError as exc:
            fail(str(exc), EXIT_SERVER)
        except StreamprocError as exc:
            fail(str(exc), EXIT_USAGE)
        except BrokenPipeError:
            sys.exit(EXIT_OK)  # output piped into head & co.
        except Exception as exc:
            if not isinstance(exc, WireError) and not _is_redis_error(exc):
                raise
            url = env._url if env and env._url else "the server"
            fail(str(describe_connection_error(url, exc)), EXIT_SERVER)
        return None

    return wrapper  # type: ignore[return-value]


def _is_redis_error(exc: Exception) -> bool:
    # redis-py is imported only by the commands that use it: until then no error can be its own.
    redis = sys.modules.get("redis")
    return redis is not None and isinstance(exc, redis.RedisError)


@click.group(context_settings={"auto_envvar_prefix": "STREAMPROC", "show_default": True})
@click.version_option(__version__, prog_name="streamproc")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Process order CSVs through reserve → payment → finalize/rollback → notify on Redis Streams.

    Configuration comes from STREAMPROC_* environment variables (see README).
    """
    try:
        log_config = LogConfig.from_env()
        setup_logging(log_config)
        ctx.obj = Env(Settings.from_env(), log_config)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)


pass_env = click.make_pass_decorator(Env)


@main.command()
@click.argument("file", type=str)
@click.option(
    "--force",
    is_flag=True,
    help="Re-submit orders that ended failed, rolled_back or "
    "dead_lettered (never a completed one).",
)
@click.option(
    "--rejects",
    "rejects_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where rejected rows go (default: <FILE>.rejects.csv).",
)
@click.option(
    "--batch-size", type=click.IntRange(1, 10_000), default=500, help="Orders per server-side call."
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@click.option(
    "--wait",
    "wait_s",
    is_flag=False,
    flag_value=600.0,
    default=None,
    type=float,
    help="After importing, wait (up to S seconds, default 600) until every stage is drained.",
)
@pass_env
@handle_errors
def ingest(
    env: Env,
    file: str,
    force: bool,
    rejects_path: Path | None,
    batch_size: int,
    as_json: bool,
    wait_s: float | None,
) -> None:
    """Import an orders CSV (path, .gz, or - for stdin). Exit 0 ok, 1 some rows rejected,
    2 unusable file, 3 server unreachable."""
    from streamproc.groups import create_groups
    from streamproc.ingest import ingest_file

    # The lean connection where it can serve: the server waits for this process's first batch.
    target: Wire | redis.Redis
    wire = env.wire()
    if wire is not None:
        create_groups(wire.call, env.keys)
        target = wire
    else:
        client = env.client()
        create_groups(client.execute_command, env.keys)
        target = client
    with _progress_bar(enabled=not as_json and sys.stderr.isatty()) as progress:
        result = ingest_file(
            target,
            env.keys,
            file,
            env.settings.default_currency,
            force=force,
            rejects_path=rejects_path,
            batch_size=batch_size,
            progress=progress,
            on_unknown_columns=lambda cols: click.echo(
                f"streamproc: ignoring unknown column(s): {', '.join(cols)}", err=True
            ),
        )
    if as_json:
        click.echo(msgspec.json.encode(result).decode())
    else:
        click.echo(result.summary_line())
    if wait_s is not None:
        from streamproc.status import wait_drained

        if wait_drained(env.client(), env.keys, wait_s) is None:
            fail(f"stages not drained after {wait_s:g} s", EXIT_SOME_REJECTED)
    sys.exit(EXIT_SOME_REJECTED if result.rejected else EXIT_OK)


@contextlib.contextmanager
def _progress_bar(enabled: bool) -> Iterator[Callable[[int, int | None], None] | None]:
    if not enabled:
        yield None
        return
    with click.progressbar(
        length=1, label="ingesting", file=sys.stderr, show_pos=False, show_percent=True
    ) as bar:

        def update(done: int, total: int | None) -> None:
            if total:
                bar.length = total
                bar.update(done - bar.pos)

        yield update


@main.command()
@click.option(
    "--stage", required=True, help="reserve, payment, finalize, rollback, notify, snapshot or all."
)
@click.option("--consumer", help="Consumer name (default: host-pid, unique per process).")
@click.option(
    "--concurrency",
    type=click.IntRange(1, 100_000),
    help="Messages in flight per stage (default: 2000 for payment, 2 batches otherwise).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=0,
    envvar="STREAMPROC_METRICS_PORT",
    help="Serve Prometheus metrics on this port at /metrics (0: none).",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    envvar="STREAMPROC_METRICS_HOST",
    help="Address the metrics port binds.",
)
@pass_env
@handle_errors
def consume(
    env: Env,
    stage: str,
    consumer: str | None,
    concurrency: int | None,
    metrics_port: int,
    metrics_host: str,
) -> None:
    """Run stage consumers until SIGTERM/SIGINT (first: finish in-flight work; second: exit)."""
    # A consumer serves its own metrics; a multiprocess directory meant for API workers (say,
    # inherited from a supervisor's environment) must not turn its values into files.
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    from streamproc.analytics.leaderboard import boards_before_cards
    from streamproc.stages import resolve_stages
    from streamproc.worker import default_consumer_name, run_worker

    # Until the run loop installs its own handlers nothing is in flight: a stop request while
    # starting up (a supervisor's quick restart, a test's teardown) is a clean exit.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _exit_cleanly)
    import asyncio

    from streamproc.server_settings import shortfalls

    stages = resolve_stages(stage)
    url = env.url
    with env.client() as client:  # fail fast and clearly when the server is not there
        for shortfall in shortfalls(client):
            log.warning("server setting: %s", shortfall)
        for currency in boards_before_cards(client, env.keys):
            log.warning(
                "the %s customer leaderboard was written by an earlier version and its names and "
                "order counts will be wrong: run `streamproc leaderboard rebuild` once",
                currency,
            )
    _use_uvloop()
    code = asyncio.run(
        run_worker(
            env.settings,
            url,
            stages,
            consumer or default_consumer_name(),
            concurrency,
            (metrics_host, metrics_port) if metrics_port else None,
        )
    )
    sys.exit(code)


def _exit_cleanly(signum: int, frame: object) -> None:
    sys.exit(EXIT_OK)


def _use_uvloop() -> None:
    import asyncio

    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_env
@handle_errors
def status(env: Env, as_json: bool) -> None:
    """Stage streams, orders by state, dead letters and stock."""
    from streamproc.status import collect_status
    from streamproc.views import print_status

    result = collect_status(env.client(), env.keys)
    if as_json:
        click.echo(msgspec.json.encode(result).decode())
    else:
        print_status(result)


@main.command()
@click.option(
    "--timeout", "timeout_s", type=click.FloatRange(0), default=600.0, help="Seconds to wait."
)
@pass_env
@handle_errors
def wait(env: Env, timeout_s: float) -> None:
    """Exit 0 once every stage is drained, 1 on timeout."""
    from streamproc.status import wait_drained

    if wait_drained(env.client(), env.keys, timeout_s) is None:
        fail(f"not drained after {timeout_s:g} s", 1)
    click.echo("drained")


@main.group()
def stock() -> None:
    """The stock catalogue."""


@stock.command("load")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--keep-existing", is_flag=True, help="Leave SKUs that already exist untouched.")
@pass_env
@handle_errors
def stock_load(env: Env, file: Path, keep_existing: bool) -> None:
    """Load products CSV (sku,name,price,stock): sets each SKU's available stock."""
    from streamproc.stock import load_catalogue

    loaded, kept = load_catalogue(env.client(), env.keys, file, keep_existing)
    click.echo(f"loaded {loaded} SKUs" + (f", kept {kept} existing" if kept else ""))


# "-5" must reach set_stock as a quantity (one-line "must be >= 0"), not fail as an unknown option.
@stock.command("set", context_settings={"ignore_unknown_options": True})
@click.argument("sku")
@click.argument("quantity", type=int)
@pass_env
@handle_errors
def stock_set(env: Env, sku: str, quantity: int) -> None:
    """Set the available stock of one SKU."""
    from streamproc.stock import set_stock

    set_stock(env.client(), env.keys, sku, quantity)
    click.echo(f"{sku}: {quantity} available")


@stock.command("show")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_env
@handle_errors
def stock_show(env: Env, as_json: bool) -> None:
    """Every SKU with initial, available, reserved and committed units."""
    from streamproc.stock import show_stock
    from streamproc.views import print_stock

    rows = show_stock(env.client(), env.keys)
    if as_json:
        click.echo(msgspec.json.encode(rows).decode())
    else:
        print_stock(rows)


@main.group()
def orders() -> None:
    """Orders."""


@orders.command("export")
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), default="csv")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="File to write (default: standard output).",
)
@pass_env
@handle_errors
def orders_export(env: Env, fmt: str, output: Path | None) -> None:
    """Every order with state, lines, total, payment outcome and gateway charge count."""
    from streamproc.export import iter_orders, write_csv, write_jsonl

    client = env.client()
    writer = write_csv if fmt == "csv" else write_jsonl
    if output is None:
        count = writer(iter_orders(client, env.keys), sys.stdout)
    else:
        tmp = output.with_name(output.name + ".part")
        with tmp.open("w", encoding="utf-8", newline="") as handle:
            count = writer(iter_orders(client, env.keys), handle)
        tmp.replace(output)  # readers never see a half-written export
    click.echo(f"exported {count} orders", err=True)


@main.group()
def server() -> None:
    """The embedded server (used when STREAMPROC_REDIS_URL is unset)."""


@server.command("start")
@pass_env
@handle_errors
def server_start(env: Env) -> None:
    """Start (or reuse) the embedded server and print its URL."""
    if env.settings.redis_url:
        raise ConfigError("STREAMPROC_REDIS_URL is set: no embedded server is used")
    click.echo(env.url)


@server.command("stop")
@pass_env
@handle_errors
def server_stop(env: Env) -> None:
    """Stop the embedded server (its data stays in the home directory)."""
    from streamproc.embedded import stop_embedded

    stopped = stop_embedded(env.settings.home_dir)
    click.echo("stopped" if stopped else "not running")


@server.command("status")
@pass_env
@handle_errors
def server_status(env: Env) -> None:
    """Whether the embedded server runs, and where."""
    from streamproc.embedded import embedded_status

    found = embedded_status(env.settings.home_dir)
    if found is None:
        fail("embedded server not running", 1)
    else:
        click.echo(f"running: {found.url} pid {found.pid} data {found.home_dir}")


@main.command()
@click.option("--host", default="127.0.0.1", help="Address to bind.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, help="Port to bind.")
@click.option("--workers", type=click.IntRange(1, 64), default=1, help="Worker processes.")
@pass_env
@handle_errors
def api(env: Env, host: str, port: int, workers: int) -> None:
    """Serve the HTTP API with uvicorn (uvloop, httptools); logs one line per request.
    GET /metrics serves Prometheus metrics (every worker's, in one scrape)."""
    import shutil
    import tempfile

    import uvicorn

    os.environ["STREAMPROC_REDIS_URL"] = env.url  # workers re-read settings from the environment
    # Several workers share one fresh prometheus_client multiprocess directory, so a scrape
    # answered by any of them counts every worker's requests; one worker keeps its values in
    # memory (and exports its process metrics).
    metrics_dir = tempfile.mkdtemp(prefix="streamproc-metrics-") if workers > 1 else None
    if metrics_dir is None:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    else:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        notice(f"metrics of {workers} workers collected in {metrics_dir}")
    # uvicorn re-raises the stop signal once it has shut down gracefully, so the handler in
    # place then decides the exit status: a clean stop exits 0, not "killed by SIGTERM".
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _exit_cleanly)
    try:
        uvicorn.run(
            "api.app:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            loop="uvloop",
            http="httptools",
            access_log=False,  # the app logs each request with its request id instead
            server_header=False,
            # Our handler and format (text or JSON) for uvicorn's loggers too, in every worker.
            log_config=dict_config(env.log_config),
            log_level=env.log_config.level.lower(),
            # Open connections must not hold a stop past the grace period (honcho kills after 5 s).
            timeout_graceful_shutdown=max(1, round(env.settings.shutdown_grace_s)),
        )
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


@main.group()
def dlq() -> None:
    """The dead-letter stream (Horizon's failed jobs)."""


@dlq.command("list")
@click.option("--stage", help="Only dead letters of this stage.")
@click.option("--json", "as_json", is_flag=True, help="One JSON array.")
@pass_env
@handle_errors
def dlq_list(env: Env, stage: str | None, as_json: bool) -> None:
    """Dead letters, oldest first: stage, original id, deliveries, last error."""
    from streamproc.deadletters import iter_dead_letters
    from streamproc.views import print_dead_letters

    if stage is not None:
        resolve_stage_name(stage)
    letters = list(iter_dead_letters(env.client(), env.keys, stage))
    if as_json:
        click.echo(msgspec.json.encode(letters).decode())
    else:
        print_dead_letters(letters)


def resolve_stage_name(stage: str) -> str:
    """Validate a single stage name (not 'all')."""
    from streamproc.stages import resolve_stages

    if stage == "all":
        raise ConfigError("name one stage, not all")
    return resolve_stages(stage)[0]


def _chosen_ids(env: Env, ids: tuple[str, ...], all_: bool, stage: str | None) -> list[str]:
    from streamproc.deadletters import all_ids

    if all_ == bool(ids):
        raise ConfigError("give dead-letter ids or --all (not both)")
    return all_ids(env.client(), env.keys, stage) if all_ else list(ids)


@dlq.command("retry")
@click.argument("ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every dead letter (of --stage).")
@click.option("--stage", help="With --all: only this stage.")
@pass_env
@handle_errors
def dlq_retry(env: Env, ids: tuple[str, ...], all_: bool, stage: str | None) -> None:
    """Send dead letters back to their stage with a fresh delivery budget."""
    from streamproc.deadletters import retry

    outcomes = retry(env.client(), env.keys, _chosen_ids(env, ids, all_, stage))
    click.echo(f"retried {sum(o.outcome == 'retried' for o in outcomes)}")
    moved = [f"{o.id} (order is {o.order_state})" for o in outcomes if o.outcome == "conflict"]
    missing = [o.id for o in outcomes if o.outcome == "missing"]
    problems = [f"order moved on, not retried: {', '.join(moved)}"] if moved else []
    problems += [f"not found: {', '.join(missing)}"] if missing else []
    if problems:
        fail("; ".join(problems), 1)


@dlq.command("purge")
@click.argument("ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every dead letter (of --stage).")
@click.option("--stage", help="With --all: only this stage.")
@pass_env
@handle_errors
def dlq_purge(env: Env, ids: tuple[str, ...], all_: bool, stage: str | None) -> None:
    """Delete dead letters for good (their orders stay dead_lettered)."""
    from streamproc.deadletters import purge

    chosen = _chosen_ids(env, ids, all_, stage)
    deleted = purge(env.client(), env.keys, chosen)
    click.echo(f"purged {deleted}")
    if deleted < len(chosen):
        fail(f"{len(chosen) - deleted} id(s) not found", 1)


def _register_more() -> None:
    # The analytics and `up` commands live in their own modules, which import this one.
    from streamproc.cli_analytics import register
    from streamproc.cli_up import register as register_up

    register(main)
    register_up(main)


_register_more()
