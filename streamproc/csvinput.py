"""Opening an orders file (a path, a .gz file or stdin), verified to be UTF-8 before use."""

from __future__ import annotations

import codecs
import contextlib
import gzip
import io
import os
import shutil
import stat
import sys
import tempfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, TextIO

from streamproc.errors import InputFileError

STDIN_PATH = "-"
STDIN_NAME = "<stdin>"
_CHUNK_BYTES = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"
_BOM = codecs.BOM_UTF8


class InputFile:
    """An opened, verified orders file: decoded text plus what a progress bar needs."""

    __slots__ = ("_position", "name", "size_bytes", "text")

    def __init__(
        self, text: TextIO, name: str, size_bytes: int | None, position: Callable[[], int]
    ) -> None:
        self.text = text
        self.name = name
        self.size_bytes = size_bytes
        self._position = position

    def bytes_read(self) -> int:
        """Bytes consumed so far from the file on disk (compressed bytes for .gz)."""
        return self._position()


class _Readable:
    """A minimal read(n) source; GzipFile and the verifier need nothing more."""

    def __init__(self, head: bytes, source: BinaryIO, copy_to: BinaryIO | None) -> None:
        self._head = head
        self._source = source
        self._copy_to = copy_to

    def read(self, size: int = -1, /) -> bytes:
        """Return the sniffed head first, then the source; copy what the source gives, if asked."""
        if self._head:
            data = self._head if size < 0 else self._head[:size]
            self._head = self._head[len(data) :]
            return data
        data = self._source.read(size)
        if self._copy_to is not None:
            self._copy_to.write(data)
        return data

    def seek(self, offset: int, /) -> int:
        """Refuse: the verifying pass reads straight through and never rewinds."""
        raise io.UnsupportedOperation("seek")


def open_orders_file(
    path: str, spool_dir: Path | None = None
) -> contextlib.AbstractContextManager[InputFile]:
    """Open `path` (`-` for stdin, `.gz` for gzip); entering it verifies the whole input first."""
    return _open(path, spool_dir)


@contextlib.contextmanager
def _open(path: str, spool_dir: Path | None) -> Iterator[InputFile]:
    with contextlib.ExitStack() as stack:
        spool: BinaryIO | None = None
        if path == STDIN_PATH:
            name, source, size_bytes = STDIN_NAME, sys.stdin.buffer, None
        else:
            name = path
            source, size_bytes = _open_on_disk(path)
            stack.enter_context(source)
        if size_bytes is None:
            # A pipe cannot be read twice: keep a copy, taken during the verifying pass.
            spool = stack.enter_context(_make_spool(name, spool_dir))
        head = _read_or_fail(source, len(_GZIP_MAGIC), name)
        if spool is not None:
            spool.write(head)
        compressed = path.endswith(".gz") or head == _GZIP_MAGIC
        has_bom = _verify(_Readable(head, source, spool), name, compressed)
        if spool is not None:
            _copy_rest(source, spool, name)
            source = spool
        source.seek(0)
        binary: BinaryIO | gzip.GzipFile = source
        if compressed:
            binary = stack.enter_context(gzip.GzipFile(fileobj=source, mode="rb"))
        if has_bom:
            binary.read(len(_BOM))
        text = io.TextIOWrapper(binary, encoding="utf-8", newline="")
        stack.callback(text.close)
        yield InputFile(text, name, size_bytes, source.tell)


def _open_on_disk(path: str) -> tuple[BinaryIO, int | None]:
    """Open a path for binary reading; size is None for pipes and other non-regular files."""
    try:
        source = open(path, "rb")  # noqa: SIM115 - the caller's ExitStack closes it
    except FileNotFoundError:
        raise InputFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputFileError(f"{path}: is a directory") from None
    except PermissionError:
        raise InputFileError(f"{path}: permission denied") from None
    except OSError as exc:
        raise InputFileError(f"{path}: cannot open ({exc.strerror or exc})") from None
    info = os.fstat(source.fileno())
    if stat.S_ISDIR(info.st_mode):
        source.close()
        raise InputFileError(f"{path}: is a directory")
    return source, info.st_size if stat.S_ISREG(info.st_mode) else None


def _make_spool(name: str, spool_dir: Path | None) -> BinaryIO:
    try:
        return tempfile.TemporaryFile(prefix="streamproc-input-", dir=spool_dir)
    except OSError as exc:
        where = spool_dir or tempfile.gettempdir()
        raise InputFileError(f"{name}: cannot create a spool file in {where} ({exc})") from None


def _read_or_fail(source: BinaryIO, size: int, name: str) -> bytes:
    try:
        return source.read(size)
    except OSError as exc:
        raise InputFileError(f"{name}: cannot read ({exc.strerror or exc})") from None


def _copy_rest(source: BinaryIO, spool: BinaryIO, name: str) -> None:
    # GzipFile may stop before EOF (trailing padding); the spool must hold everything anyway.
    try:
        shutil.copyfileobj(source, spool, _CHUNK_BYTES)
    except OSError as exc:
        raise InputFileError(f"{name}: cannot read ({exc.strerror or exc})") from None


def _verify(raw: _Readable, name: str, compressed: bool) -> bool:
    """Decode the whole input once in constant memory; return whether it starts with a BOM."""
    reader: _Readable | gzip.GzipFile = raw
    if compressed:
        reader = gzip.GzipFile(fileobj=raw, mode="rb")
    try:
        return _check_utf8(reader, name)
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise InputFileError(f"{name}: not a valid gzip file ({exc})") from None
    except OSError as exc:
        raise InputFileError(f"{name}: cannot read ({exc.strerror or exc})") from None


def _check_utf8(reader: _Readable | gzip.GzipFile, name: str) -> bool:
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    offset = 0  # bytes handed to the decoder so far
    newlines = 0  # newlines in those bytes
    has_bom = False
    has_content = False
    first = True
    while True:
        chunk = reader.read(_CHUNK_BYTES)
        final = not chunk
        # Bytes of a split multi-byte character wait in the decoder; an error points into them.
        pending = len(decoder.getstate()[0])
        if pending or not chunk.isascii():
            try:
                text = decoder.decode(chunk, final)
            except UnicodeDecodeError as exc:
                bad_offset = offset - pending + exc.start
                line = newlines + exc.object[: exc.start].count(b"\n") + 1
                raise InputFileError(
                    f"{name}: not UTF-8 at line {line} (byte offset {bad_offset})"
                ) from None
        elif has_content:
            # ASCII is UTF-8 as it stands: a C scan of the bytes proves it, no text is built.
            text = ""
        else:
            text = chunk.decode("ascii")
        if first and text:
            first = False
            has_bom = text.startswith("\ufeff")
            text = text.removeprefix("\ufeff")
        if not has_content and text and not text.isspace():
            has_content = True
        if final:
            break
        offset += len(chunk)
        newlines += chunk.count(b"\n")
    if not has_content:
        raise InputFileError(f"{name}: file is empty")
    return has_bom
