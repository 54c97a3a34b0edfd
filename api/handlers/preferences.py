"""`GET` and `PUT /api/customers/{id}/notification-preferences`: which channels and types a
customer is notified on, and the address emails go to (else the one on each order)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from api.endpoints import Call
from api.handlers.leaderboards import CustomerPath
from api.types import Timestamp, timestamp
from streamproc.clock import now_ms
from streamproc.preferences import (
    Preferences,
    default_preferences,
    load_preferences,
    save_preferences,
)

ChannelName = Literal["log", "email"]
TypeName = Literal["success", "failed"]
# ASCII only, no spaces or control characters: the address goes into an email header.
EmailAddress = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9-]{1,63}(\.[A-Za-z0-9-]{1,63})+$",
        max_length=254,
        description="an email address (ASCII)",
        examples=["jane@example.com"],
    ),
]
UNIQUE = {"uniqueItems": True}


class PreferencesBody(msgspec.Struct, forbid_unknown_fields=True):
    """The channels and notification types to enable (each at most once; [] for none), and the
    address for email (null: the customer_email of each order)."""

    channels: Annotated[list[ChannelName], msgspec.Meta(max_length=2, extra_json_schema=UNIQUE)]
    types: Annotated[list[TypeName], msgspec.Meta(max_length=2, extra_json_schema=UNIQUE)]
    email: EmailAddress | None = None

    def check(self) -> dict[str, list[str]]:
        """No channel or type twice."""
        problems: dict[str, list[str]] = {}
        if len(set(self.channels)) != len(self.channels):
            problems["channels"] = ["must not name a channel twice"]
        if len(set(self.types)) != len(self.types):
            problems["types"] = ["must not name a type twice"]
        return problems


class PreferencesView(msgspec.Struct):
    """A customer's notification preferences; is_default: none were ever set (the defaults)."""

    customer_id: int
    channels: list[str]
    types: list[str]
    email: str | None
    is_default: bool
    updated_at: Timestamp | None


def _view(customer_id: int, preferences: Preferences, is_default: bool) -> PreferencesView:
    return PreferencesView(
        customer_id=customer_id,
        channels=list(preferences.channels),
        types=list(preferences.types),
        email=preferences.email or None,
        is_default=is_default,
        updated_at=timestamp(preferences.updated_ms),
    )


async def get_preferences(call: Call[CustomerPath, None, None]) -> PreferencesView:
    """The customer's preferences, or the defaults when they never set any."""
    services, customer_id = call.services, call.path.id
    stored = await load_preferences(services.redis, services.keys, [customer_id])
    if customer_id in stored:
        return _view(customer_id, stored[customer_id], is_default=False)
    return _view(customer_id, default_preferences(services.settings), is_default=True)


async def put_preferences(call: Call[CustomerPath, None, PreferencesBody]) -> PreferencesView:
    """Replace the customer's preferences; later notifications follow them."""
    services, customer_id, body = call.services, call.path.id, call.body
    # Kept in a fixed order, whatever order they were given in.
    preferences = Preferences(
        channels=[c for c in ("log", "email") if c in body.channels],
        types=[t for t in ("success", "failed") if t in body.types],
        email=(body.email or "").strip(),
        updated_ms=now_ms(),
    )
    await save_preferences(services.redis, services.keys, customer_id, preferences)
    return _view(customer_id, preferences, is_default=False)
