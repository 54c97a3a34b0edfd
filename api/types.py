"""Value types shared by endpoints: validated path/query values and their OpenAPI schemas."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

import msgspec

from streamproc.clock import iso_ms
from streamproc.csvreader import MAX_CUSTOMER_ID

OrderId = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[A-Za-z0-9._-]{1,64}$",
        description="1 to 64 characters of A-Z a-z 0-9 . _ -",
        examples=["ORD-001"],
    ),
]
# 19 digits keep both halves inside Redis's unsigned 64-bit range.
StreamId = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[0-9]{1,19}-[0-9]{1,19}$",
        description="a stream entry id: <ms>-<seq>, each at most 19 digits",
        examples=["1732530000000-0"],
    ),
]
Currency = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[A-Za-z]{3}$", description="a 3-letter ISO 4217 code", examples=["USD"]
    ),
]
Limit = Annotated[int, msgspec.Meta(ge=1, le=500, description="an integer from 1 to 500")]
# msgspec parses RFC 3339 full-dates only: the YYYY-MM-DD shape and a day that exists (no 02-30).
Day = Annotated[
    date,
    msgspec.Meta(description="a calendar date as YYYY-MM-DD", examples=["2025-11-10"]),
]
# The range ingest accepts (JSON numbers stay exact up to 2^53 - 1).
CustomerId = Annotated[
    int,
    msgspec.Meta(
        ge=1,
        le=MAX_CUSTOMER_ID,
        description=f"an integer from 1 to {MAX_CUSTOMER_ID}",
        examples=[501],
    ),
]
StageName = Literal["reserve", "payment", "finalize", "rollback", "notify", "snapshot"]
Timestamp = Annotated[str, msgspec.Meta(extra_json_schema={"format": "date-time"})]


def timestamp(ms: int) -> str | None:
    """Epoch milliseconds as ISO 8601 UTC with Z; None for "never" (0)."""
    return iso_ms(ms) if ms else None
