"""Reading Redis replies (bytes with decode_responses off): text and stream entry ids."""

from __future__ import annotations

from typing import Any


def text(value: Any) -> str:
    """A reply value as str ("" for None)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def id_key(entry_id: Any) -> tuple[int, int]:
    """A stream entry id as (ms, seq), for ordering ids correctly (not as strings)."""
    ms, _, seq = text(entry_id).partition("-")
    return int(ms), int(seq or 0)


def id_ms(entry_id: Any) -> int:
    """The millisecond timestamp part of a stream entry id."""
    return id_key(entry_id)[0]
