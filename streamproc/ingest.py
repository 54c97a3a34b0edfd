"""`streamproc ingest`: stream a CSV into the reserve stage, batched, idempotent per order."""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import msgspec
import redis

from streamproc.clock import now_ms, utc_day
from streamproc.csvinput import STDIN_PATH, open_orders_file
from streamproc.csvreader import OrderReader, ParsedOrder, RejectedRow
from streamproc.errors import InputFileError
from streamproc.keys import Keys
from streamproc.lua import SyncScripts
from streamproc.models import encode_order

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


class _Batcher:
    """Accumulates orders and sends them in one ingest.lua call per batch."""

    def __init__(self, client: redis.Redis, keys: Keys, force: bool, batch_size: int) -> None:
        self.scripts = SyncScripts.register(client)
        self.keys = keys
        self.force = "1" if force else "0"
        self.batch_size = batch_size
        self.pending: list[ParsedOrder] = []
        self.imported = self.duplicates = self.resubmitted = 0

    def add(self, parsed: ParsedOrder) -> None:
        self.pending.append(parsed)
        if len(self.pending) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        now = now_ms()
        keys = [self.keys.stream("reserve"), self.keys.state_counts, self.keys.day(utc_day(now))]
        args: list[Any] = [now, self.force, len(self.pending)]
        for parsed in self.pending:
            keys.append(self.keys.order(parsed.order.order_id))
            args += [parsed.order.order_id, encode_order(parsed.order)]
        outcome = self.scripts.run("ingest", keys, args)
        text = outcome.decode() if isinstance(outcome, bytes) else str(outcome)
        self.imported += text.count("n")
        self.resubmitted += text.count("r")
        self.duplicates += text.count("d")
        self.pending.clear()


def ingest_file(
    client: redis.Redis,
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
    """Import one file; raises InputFileError (nothing imported) when it is unusable."""
    started = time.perf_counter()
    batcher = _Batcher(client, keys, force, batch_size)
    with open_orders_file(path) as source:
        reader = OrderReader(source.text, default_currency, source.name)
        if reader.unknown_columns and on_unknown_columns:
            on_unknown_columns(reader.unknown_columns)
        explicit_rejects = rejects_path is not None
        rejects_path = rejects_path or default_rejects_path(path)
        check_rejects_path(path, rejects_path)
        rejects = _RejectsWriter(rejects_path, reader.header)
        try:
            for n, item in enumerate(reader):
                if isinstance(item, RejectedRow):
                    rejects.write(item)
                else:
                    batcher.add(item)
                if progress is not None and n % 2048 == 0:
                    progress(source.bytes_read(), source.size_bytes)
            batcher.flush()
        finally:
            rejects.close()
        if not rejects.count and not explicit_rejects:
            # The default rejects file describes the last import: a clean one leaves none behind.
            rejects_path.unlink(missing_ok=True)
        if progress is not None:
            progress(source.bytes_read(), source.size_bytes)
        rows = reader.rows
    seconds = time.perf_counter() - started
    return IngestResult(
        rows=rows,
        imported=batcher.imported,
        duplicates=batcher.duplicates,
        rejected=rejects.count,
        resubmitted=batcher.resubmitted,
        seconds=round(seconds, 3),
        rows_per_s=round(rows / seconds, 1) if seconds > 0 else 0.0,
        rejects_file=str(rejects.path) if rejects.count else None,
        unknown_columns=reader.unknown_columns,
    )
