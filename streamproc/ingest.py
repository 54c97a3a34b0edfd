"""`streamproc ingest`: stream a CSV into the reserve stage, batched, idempotent per order."""

from __future__ import annotations

import contextlib
import csv
import functools
import os
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NoReturn, Protocol

import hiredis
import msgspec

from streamproc.clock import now_ms, utc_day
from streamproc.csvinput import STDIN_PATH, InputFile, open_orders_file
from streamproc.csvreader import OrderReader, ParsedOrder, RejectedRow
from streamproc.errors import InputFileError, ServerError
from streamproc.keys import Keys
from streamproc.lua import script_source
from streamproc.models import order_encoder
from streamproc.wire import CannotConnect, ConnectionLost, ReplyError, Wire, WireError

if TYPE_CHECKING:
    import redis

ProgressFn = Callable[[int], None]


class IngestResult(msgspec.Struct, kw_only=True):
    """The summary `ingest --json` prints."""

    rows: int
    imported: int
    duplicates: int
    rejected: int
    seconds: float
    rows_per_s: float
    rejects_file: str | None
    resubmitted: int = 0
    unknown_columns: list[str] = msgspec.field(default_factory=list)

    def summary_line(self) -> str:
        """The one-line human summary."""
        parts = [
            f"imported {self.imported} orders",
            f"{self.duplicates} duplicates",
            f"{self.rejected} rows rejected",
        ]
        if self.resubmitted:
            parts.insert(1, f"{self.resubmitted} re-submitted")
        text = (
            f"{', '.join(parts)} from {self.rows} rows in {self.seconds:.2f} s "
            f"({self.rows_per_s:,.0f} rows/s)"
        )
        if self.rejects_file:
            text += f"; rejects in {self.rejects_file}"
        return text


class IngestInterrupted(ServerError):
    """The server failed partway through an import; `result` counts what was imported."""

    def __init__(self, message: str, result: IngestResult) -> None:
        super().__init__(message)
        self.result = result


def default_rejects_path(path: str) -> Path:
    """`<input>.rejects.csv`, or ./stdin.rejects.csv for standard input."""
    return Path("stdin.rejects.csv") if path == STDIN_PATH else Path(f"{path}.rejects.csv")


def check_rejects_path(path: str, rejects: Path) -> None:
    """Refuse, before anything is imported, a rejects file that cannot be created or that is
    the input itself (opening it for writing would truncate the file being read)."""
    if rejects.is_dir():
        raise InputFileError(f"{rejects}: the rejects file is a directory")
    if not rejects.parent.is_dir():
        raise InputFileError(f"{rejects}: no directory {rejects.parent} for the rejects file")
    if path != STDIN_PATH and rejects.exists():
        try:
            same = os.path.samefile(path, rejects)
        except OSError:
            same = False
        if same:
            raise InputFileError(f"{rejects}: the rejects file would overwrite the input")


@dataclass(slots=True)
class _RejectsWriter:
    """Opens the rejects file on the first reject only, so a clean import leaves none behind."""

    path: Path
    header: list[str]
    handle: IO[str] | None = None
    writer: Any = None
    count: int = 0

    def write(self, reject: RejectedRow) -> None:
        if self.writer is None:
            try:
                self.handle = self.path.open("w", encoding="utf-8", newline="")
            except OSError as exc:
                raise InputFileError(
                    f"{self.path}: cannot write the rejects file ({exc.strerror or exc}); "
                    "fix it and re-run (imported orders are skipped as duplicates)"
                ) from None
            self.writer = csv.writer(self.handle)
            self.writer.writerow([*self.header, "line", "reason"])
        values = reject.values + [""] * (len(self.header) - len(reject.values))
        self.writer.writerow([*values[: len(self.header)], reject.line, reject.reason])
        self.count += 1

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


# Batches sent and not yet answered, at most: one running on the server and two queued behind it,
# so the server never waits while this process parses the next batch, even when this process is
# briefly descheduled (on a small machine it shares the CPUs with the server).
_IN_FLIGHT = 3


class Link(Protocol):
    """The one connection an import runs on: a streamproc.wire.Wire (the CLI), or a connection
    of a redis-py client's pool behind the same interface (streamproc.connection.PooledLink).
    Both raise streamproc.wire's errors."""

    def connect(self) -> None: ...

    def send(self, packed: bytes) -> None: ...

    def read(self) -> Any: ...

    def call(self, *args: str | bytes | int | float) -> Any: ...

    def disconnect(self) -> None: ...

    def release(self) -> None: ...


class _Stopped(Exception):
    """The import stopped partway; the pipeline's `failure` says where and why."""


@dataclass(frozen=True, slots=True)
class _Failure:
    """Where an import stopped: the file line of the first order not known to be imported."""

    line: int
    reason: str
    # Orders from `line` on whose fate is unknown (a lost connection, a script that aborted);
    # 0 when the server said exactly what it did.
    uncertain: int = 0


class _Pipeline:
    """Sends batches to ingest.lua on one connection, pipelined: the server runs batch N while the
    caller parses batch N+1. Replies come back in order, so the counts stay exact."""

    def __init__(self, link: Link, keys: Keys, force: bool) -> None:
        self._link = link
        self._connected = False  # on the first batch
        # EVAL, not EVALSHA: the server caches the script by its digest, and a NOSCRIPT (a restart,
        # SCRIPT FLUSH) can never fail a batch whose successors are already on the wire.
        self._script = script_source("ingest").encode()
        self._keys = keys
        self._stream, self._counts = keys.stream("reserve"), keys.state_counts
        self._rows = keys.ingest_rows
        self._id_at = len(keys.order_prefix) + 1  # where the script finds the id in a key
        # One per import, so a stopped import never stops another one running beside it.
        self._stop_key = keys.ingest_stop_marker(secrets.token_hex(8))
        self._force = "1" if force else "0"
        self._in_flight: deque[list[int]] = deque()  # per batch sent: the line of each order
        # The previous batch's last order key, which the next batch checks (ingest.lua).
        self._fence: tuple[str, ...] = ()
        self.imported = self.duplicates = self.resubmitted = 0
        self.failure: _Failure | None = None
        self.imported_after_failure = 0  # by batches already sent when the failure happened

    def send(
        self,
        order_keys: list[str],
        payloads: list[bytes],
        lines: list[int],
        row_counts: list[int],
        rejected: int,
    ) -> None:
        """Send one batch (and the rows rejected since the last one, for the ingest rows count),
        then read replies until fewer than _IN_FLIGHT are unanswered."""
        now = now_ms()
        command = (
            "EVAL",
            self._script,
            5 + len(order_keys) + len(self._fence),
            self._stream,
            self._counts,
            self._keys.day(utc_day(now)),
            self._stop_key,
            self._rows,
            *order_keys,
            *self._fence,
            now,
            self._force,
            len(order_keys),
            self._id_at,
            rejected,
            sum(row_counts),
            ",".join(map(str, row_counts)),
            *payloads,
        )
        # hiredis packs in C; its stub types the argument as a 1-tuple.
        packed = hiredis.pack_command(command)  # type: ignore[arg-type]
        if not self._connected:
            self._connect(lines[0])
        self._in_flight.append(lines)
        self._fence = (order_keys[-1],)
        try:
            self._link.send(packed)
        except ConnectionLost as exc:
            self._lost(exc)
        while len(self._in_flight) >= _IN_FLIGHT:
            self._collect()
        if self.failure is not None:
            self.finish()

    def finish(self, rejected: int = 0) -> None:
        """Read every outstanding reply, and count the rows rejected after the last batch;
        raises _Stopped if the import stopped."""
        while self._in_flight:
            self._collect()
        if self.failure is not None:
            self._clear_stop_marker()
            raise _Stopped
        if rejected:
            self._count_rejected(rejected)

    def _count_rejected(self, rejected: int) -> None:
        # Statistics only: an import that went through is not failed for them.
        with contextlib.suppress(WireError):
            self._link.call("HINCRBY", self._rows, "rejected", rejected)

    def close(self) -> None:
        """Give the connection back; one with unread replies is closed rather than reused."""
        if self._in_flight:
            self._link.disconnect()
            self._in_flight.clear()
        self._link.release()

    def _connect(self, line: int) -> None:
        """Connect for this import; nothing is sent yet if it fails."""
        try:
            self._link.connect()
        except CannotConnect as exc:
            self._fail(_Failure(line, f"cannot reach the server ({exc})"))
            raise _Stopped from None
        self._connected = True

    def _collect(self) -> None:
        """Read the oldest batch's reply and count what it did."""
        lines = self._in_flight[0]
        try:
            reply = self._link.read()
        except ReplyError as exc:
            # Refused (BUSY, READONLY...) or aborted outside the script's per-order checks: it
            # may have done part of its work, and cannot say which part.
            self._in_flight.popleft()
            self._fail(_Failure(lines[0], str(exc), uncertain=len(lines)))
            return
        except ConnectionLost as exc:
            self._lost(exc)
        self._in_flight.popleft()
        after_failure = self.failure is not None
        outcome = reply
        if isinstance(reply, list):  # [outcomes of the orders before the stop, why it stopped]
            outcome, reason = reply
            if len(outcome) < len(lines):
                self._fail(_Failure(lines[len(outcome)], _text(reason)))
        text = _text(outcome)
        imported = text.count("n")
        if after_failure:
            self.imported_after_failure += imported
        self.imported += imported
        self.resubmitted += text.count("r")
        self.duplicates += text.count("d")

    def _fail(self, failure: _Failure) -> None:
        # The first failure is where the import stopped. A batch that was already sent when it
        # happened did nothing (the stop marker) or is counted by what it answered.
        if self.failure is None:
            self.failure = failure

    def _lost(self, exc: ConnectionLost) -> NoReturn:
        """The connection broke: every batch still in flight may or may not have been run."""
        first = self._in_flight[0][0]
        uncertain = sum(len(lines) for lines in self._in_flight)
        self._in_flight.clear()
        self._link.disconnect()
        self._fail(_Failure(first, f"lost the connection to the server ({exc})", uncertain))
        raise _Stopped

    def _clear_stop_marker(self) -> None:
        # Every batch sent has answered, so the marker has done its job; its expiry is the backstop
        # for a client that dies first.
        if not self._connected:
            return
        with contextlib.suppress(WireError):
            self._link.call("DEL", self._stop_key)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _import(
    reader: OrderReader,
    pipeline: _Pipeline,
    keys: Keys,
    batch_size: int,
    rejects: _RejectsWriter,
    tick: Callable[[], None] | None,
) -> None:
    """The hot loop: each order into the batch, each full batch into the pipeline, in file order."""
    prefix, encode, write_reject = keys.order_prefix, order_encoder(), rejects.write
    order_keys: list[str] = []
    payloads: list[bytes] = []
    lines: list[int] = []  # the file line of each order, to say where a failure struck
    row_counts: list[int] = []  # CSV rows per order, for the ingest rows count
    counted = 0  # rejects already sent with a batch
    for n, item in enumerate(reader):
        if isinstance(item, ParsedOrder):
            order = item.order
            order_keys.append(prefix + order.order_id)
            payloads.append(encode(order))
            lines.append(item.line)
            row_counts.append(item.row_count)
            if len(order_keys) >= batch_size:
                pipeline.send(order_keys, payloads, lines, row_counts, rejects.count - counted)
                counted = rejects.count
                order_keys, payloads, lines, row_counts = [], [], [], []
        else:
            write_reject(item)
        if tick is not None and n % 2048 == 0:
            tick()
    if order_keys:
        pipeline.send(order_keys, payloads, lines, row_counts, rejects.count - counted)
        counted = rejects.count
    pipeline.finish(rejects.count - counted)


def ingest_file(
    client: redis.Redis | Wire,
    keys: Keys,
    path: str,
    default_currency: str,
    *,
    force: bool = False,
    rejects_path: Path | None = None,
    batch_size: int = 500,
    progress: Callable[[int, int | None], None] | None = None,
    on_unknown_columns: Callable[[list[str]], None] | None = None,
) -> IngestResult:
    """Import one file; raises InputFileError (nothing imported) when it is unusable, and
    IngestInterrupted (what was imported so far in its result) when the server fails partway."""
    started = time.perf_counter()
    link = client if isinstance(client, Wire) else _pooled_link(client)
    pipeline = _Pipeline(link, keys, force)
    with open_orders_file(path) as source:
        reader = OrderReader(source.text, default_currency, source.name)
        if reader.unknown_columns and on_unknown_columns:
            on_unknown_columns(reader.unknown_columns)
        explicit_rejects = rejects_path is not None
        rejects_path = rejects_path or default_rejects_path(path)
        check_rejects_path(path, rejects_path)
        rejects = _RejectsWriter(rejects_path, reader.header)
        tick = None
        if progress is not None:
            tick = functools.partial(_report_progress, progress, source)
        stopped = False
        try:
            _import(reader, pipeline, keys, batch_size, rejects, tick)
        except _Stopped:
            stopped = True
        finally:
            pipeline.close()
            rejects.close()
        if not rejects.count and not explicit_rejects:
            # The default rejects file describes the last import: a clean one leaves none behind.
            rejects_path.unlink(missing_ok=True)
        if progress is not None and not stopped:
            progress(source.bytes_read(), source.size_bytes)
        rows = reader.rows
    seconds = time.perf_counter() - started
    result = IngestResult(
        rows=rows,
        imported=pipeline.imported,
        duplicates=pipeline.duplicates,
        rejected=rejects.count,
        resubmitted=pipeline.resubmitted,
        seconds=round(seconds, 3),
        rows_per_s=round(rows / seconds, 1) if seconds > 0 else 0.0,
        rejects_file=str(rejects.path) if rejects.count else None,
        unknown_columns=reader.unknown_columns,
    )
    if pipeline.failure is not None:
        message = _interrupted_message(
            source.name, pipeline.failure, result, pipeline.imported_after_failure
        )
        raise IngestInterrupted(message, result)
    return result


def _pooled_link(client: redis.Redis) -> Link:
    from streamproc.connection import PooledLink  # redis-py: the caller already imported it

    return PooledLink(client)


def _report_progress(progress: Callable[[int, int | None], None], source: InputFile) -> None:
    progress(source.bytes_read(), source.size_bytes)


def _interrupted_message(
    name: str, failure: _Failure, result: IngestResult, imported_after: int
) -> str:
    """One line: where and why the import stopped, what it imported, and what to do now."""
    reason = " ".join(failure.reason.split()).rstrip(".")
    text = f"{name}: import stopped at line {failure.line}: {reason}; imported {result.imported}"
    if result.resubmitted:
        text += f" and re-submitted {result.resubmitted}"
    text += f" orders, skipped {result.duplicates} duplicates"
    if result.rejected:
        text += f", rejected {result.rejected} rows (in {result.rejects_file})"
    if failure.uncertain:
        text += (
            f"; the {failure.uncertain} orders from line {failure.line} on may or may not have "
            "been imported"
        )
    elif not imported_after:
        text += "; nothing from that line on was imported"
    if imported_after:
        text += f"; {imported_after} orders after that line were imported"
    return (
        f"{text}. Re-run the same command to import the rest: orders already in count as duplicates"
    )
