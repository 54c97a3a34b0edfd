"""Value types shared by endpoints: validated path/query values and their OpenAPI schemas."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from streamproc.clock import iso_ms

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
StageName = Literal["reserve", "payment", "finalize", "rollback", "notify"]
Timestamp = Annotated[str, msgspec.Meta(extra_json_schema={"format": "date-time"})]


def timestamp(ms: int) -> str | None:
    """Epoch milliseconds as ISO 8601 UTC with Z; None for "never" (0)."""
    return iso_ms(ms) if ms else None
