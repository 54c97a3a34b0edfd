"""The JSON envelope of SPEC §7, encoded with msgspec (fast, and exact for money)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
from starlette.responses import Response

from streamproc.money import format_cents

_encoder = msgspec.json.Encoder()


class Envelope(msgspec.Struct):
    """A successful answer."""

    success: bool
    data: Any


class ErrorBody(msgspec.Struct, omit_defaults=True):
    """A failed answer: a message for people, messages per field, and the id of a 500."""

    success: bool
    message: str
    errors: dict[str, list[str]]
    request_id: str | None = None
    data: Any = None  # health's 503 still carries the full report


class JSON(Response):
    """A response whose content is encoded by msgspec."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        """msgspec JSON bytes."""
        return _encoder.encode(content)


def success(data: Any, status: int = 200) -> JSON:
    """`{"success": true, "data": ...}`."""
    return JSON(Envelope(True, data), status_code=status)


def failure(
    status: int,
    message: str,
    errors: dict[str, list[str]] | None = None,
    request_id: str | None = None,
    headers: Mapping[str, str] | None = None,
    data: Any = None,
) -> JSON:
    """`{"success": false, "message": ..., "errors": {...}}`."""
    body = ErrorBody(False, message, errors or {}, request_id, data)
    return JSON(body, status, dict(headers) if headers else None)


def money(cents: int) -> float:
    """Integer cents as a JSON number with exactly two decimals (12.50, never 12.5 or 12.499...)."""
    # Raw splices the exact decimal text into the JSON; typed float so schemas say "number".
    return msgspec.Raw(format_cents(cents).encode())  # type: ignore[return-value]
