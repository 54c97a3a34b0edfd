"""The snapshot store: immutable Parquet files of facts in one directory, listed by a manifest in
Redis.

A file is written under a hidden temp name, renamed into place, and only then registered in the
manifest (`Keys.snapshot_files`) by a script that also acks its facts' stream entries: readers
take the manifest's list, never a directory listing, so a half-written or unregistered file is
never read, and a fact is registered exactly once. Compaction merges small files into one and
swaps them in the manifest in one step; the files it replaced are deleted after a grace period,
so a reader holding the old list finishes its query.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import msgspec
import redis
import redis.asyncio as aredis

from streamproc.analytics.facts import FACTS_FROM_ROWS, ROW_COLUMNS, SEQ_BITS
from streamproc.keys import Keys
from streamproc.replies import id_key

PREFIX = "facts-"
SUFFIX = ".parquet"
TEMP_DIR = ".tmp"
# A file renamed into place but never registered (its writer died) is removed after this long;
# far above any wait for registration (a rebuild holds registration for at most REBUILD_TTL_S).
ORPHAN_AGE_S = 3600.0
# Files compaction replaced stay on disk this long for readers that listed them just before.
TRASH_GRACE_S = 300.0


class FileInfo(msgspec.Struct):
    """What the manifest records about one file (for pruning by day and for status)."""

    rows: int
    min_day: str
    max_day: str
    last_id: str
    bytes: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One consistent view of the store: the manifest version and its files."""

    version: int
    files: dict[str, FileInfo]

    def paths(self, root: Path, start_day: str = "", end_day: str = "") -> list[str]:
        """The files holding facts of days in [start_day, end_day] ("" = unbounded)."""
        return sorted(
            str(root / name)
            for name, info in self.files.items()
            if (not end_day or info.min_day <= end_day)
            and (not start_day or info.max_day >= start_day)
        )

    @property
    def rows(self) -> int:
        """Facts in the store."""
        return sum(info.rows for info in self.files.values())


# What the manifest records of a new file (from the Parquet metadata: no data is read).
SPAN_SQL = "SELECT count(*), min(day)::VARCHAR, max(day)::VARCHAR FROM {source}"

_info_decoder = msgspec.json.Decoder(FileInfo)
_encoder = msgspec.json.Encoder()


def decode_manifest(version: bytes | None, raw: dict[bytes, bytes]) -> Snapshot:
    """A Snapshot from the replies of GET version and HGETALL files."""
    return Snapshot(
        int(version or 0), {k.decode(): _info_decoder.decode(v) for k, v in raw.items()}
    )


async def load_manifest(client: aredis.Redis, keys: Keys) -> Snapshot:
    """The manifest's version and files, read in one transaction."""
    async with client.pipeline(transaction=True) as pipe:
        pipe.get(keys.snapshot_version)
        pipe.hgetall(keys.snapshot_files)
        version, files = await pipe.execute()
    return decode_manifest(version, files)


def load_manifest_sync(client: redis.Redis, keys: Keys) -> Snapshot:
    """load_manifest for the blocking client."""
    with client.pipeline(transaction=True) as pipe:
        pipe.get(keys.snapshot_version)
        pipe.hgetall(keys.snapshot_files)
        version, files = pipe.execute()
    return decode_manifest(version, files)


def encode_info(info: FileInfo) -> bytes:
    """A manifest value."""
    return _encoder.encode(info)


def file_name(last_id: str, merged: bool = False) -> str:
    """A store file's name: the last stream id it holds, and a token of this one write."""
    ms, _, n = last_id.partition("-")
    # Two writers of the same entries (one paused, its entries taken over) must never rename onto
    # each other's file: a registered file would change under the manifest.
    tag = f"-{'m' if merged else 'w'}{uuid.uuid4().hex[:8]}"
    return f"{PREFIX}{int(ms):013d}-{int(n or 0)}{tag}{SUFFIX}"


def quote(path: str | Path) -> str:
    """A path as an SQL string literal."""
    return "'" + str(path).replace("'", "''") + "'"


def rows_sql(ndjson: Path) -> str:
    """A query deriving facts (the store's columns) from a file of facts.fact_row rows."""
    source = f"read_json({quote(ndjson)}, format='newline_delimited', columns={ROW_COLUMNS})"
    return FACTS_FROM_ROWS.format(source=source, bits=SEQ_BITS)


def source_sql(paths: Sequence[str]) -> str:
    """A FROM clause reading the given files."""
    return f"read_parquet([{', '.join(quote(p) for p in paths)}])"


class Duck:
    """One in-memory DuckDB database per process; a cursor per thread (they are not shared)."""

    _local = threading.local()
    _lock = threading.Lock()
    _root: duckdb.DuckDBPyConnection | None = None

    @classmethod
    def cursor(cls) -> duckdb.DuckDBPyConnection:
        """This thread's cursor."""
        cur = getattr(cls._local, "cursor", None)
        if cur is None:
            with cls._lock:
                if cls._root is None:
                    cls._root = duckdb.connect(":memory:")
            cur = cls._root.cursor()
            cls._local.cursor = cur
        return cur


class FactStore:
    """The store's directory: writing, merging and deleting files (registration is Redis's)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.temp = root / TEMP_DIR

    def prepare(self) -> None:
        """Create the directories."""
        self.temp.mkdir(parents=True, exist_ok=True)

    def write_rows(
        self, rows: Sequence[bytes], last_id: str, on_half: Callable[[], None] | None = None
    ) -> tuple[str, FileInfo]:
        """Write facts.fact_row rows (DuckDB derives the facts) to a new file in place, not yet
        registered; returns its name and info."""
        self.prepare()
        token = uuid.uuid4().hex
        ndjson = self.temp / f"{token}.ndjson"
        parquet = self.temp / f"{token}{SUFFIX}"
        try:
            ndjson.write_bytes(b"".join(rows))
            if on_half is not None:
                on_half()
            cur = Duck.cursor()
            # COPY takes no parameters; every name here is ours (uuid temp names, quoted).
            cur.execute(
                f"COPY ({rows_sql(ndjson)} ORDER BY day, customer_id) "
                f"TO {quote(parquet)} (FORMAT parquet, COMPRESSION zstd)"
            )
            count, min_day, max_day = cur.execute(
                SPAN_SQL.format(source=source_sql([str(parquet)]))
            ).fetchone() or (0, "", "")
            _fsync(parquet)
            name = file_name(last_id)
            os.replace(parquet, self.root / name)
            _fsync(self.root)
        finally:
            ndjson.unlink(missing_ok=True)
            parquet.unlink(missing_ok=True)
        size = (self.root / name).stat().st_size
        return name, FileInfo(int(count), str(min_day), str(max_day), last_id, size)

    def merge(self, names: Sequence[str], infos: Sequence[FileInfo]) -> tuple[str, FileInfo]:
        """Write one file holding every fact of `names` (sorted by day); returns its name, info."""
        self.prepare()
        last_id = max((i.last_id for i in infos), key=id_key)
        name = file_name(last_id, merged=True)
        parquet = self.temp / f"{uuid.uuid4().hex}{SUFFIX}"
        try:
            source = source_sql([str(self.root / n) for n in names])
            Duck.cursor().execute(
                f"COPY (SELECT * FROM {source} ORDER BY day, customer_id) "  # noqa: S608
                f"TO {quote(parquet)} (FORMAT parquet, COMPRESSION zstd)"
            )
            _fsync(parquet)
            os.replace(parquet, self.root / name)
            _fsync(self.root)
        finally:
            parquet.unlink(missing_ok=True)
        info = FileInfo(
            sum(i.rows for i in infos),
            min(i.min_day for i in infos),
            max(i.max_day for i in infos),
            last_id,
            (self.root / name).stat().st_size,
        )
        return name, info

    def delete(self, name: str) -> None:
        """Remove one file (gone already is fine)."""
        (self.root / name).unlink(missing_ok=True)

    def orphans(self, known: set[str], now_s: float | None = None) -> list[str]:
        """Store files and temp files no manifest knows that are older than ORPHAN_AGE_S."""
        now_s = time.time() if now_s is None else now_s
        found: list[str] = []
        for folder, prefix in ((self.root, ""), (self.temp, TEMP_DIR + "/")):
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                rel = prefix + path.name
                if path.is_file() and rel not in known:
                    with contextlib.suppress(FileNotFoundError):
                        if now_s - path.stat().st_mtime > ORPHAN_AGE_S:
                            found.append(rel)
        return found


def _fsync(path: Path) -> None:
    # The manifest will point at this file: it must be on disk before it is registered.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
