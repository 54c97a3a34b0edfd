"""Per-customer notification preferences (SPEC §6): the channels and types a customer wants, and
the address to email (the order's customer_email when none is set here).

A customer with no stored preferences gets the defaults: STREAMPROC_NOTIFICATION_CHANNELS (log)
and both types.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec
import redis.asyncio as aredis

from streamproc.keys import Keys
from streamproc.notifications import TYPES
from streamproc.settings import Settings


class Preferences(msgspec.Struct, array_like=True):
    """What one customer wants to be notified of, and how (stored as a short JSON array)."""

    channels: list[str]
    types: list[str]
    email: str = ""
    updated_ms: int = 0

    def channels_for(self, kind: str) -> list[str]:
        """The channels a notification of type `kind` goes to (none when the type is off)."""
        return self.channels if kind in self.types else []


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Preferences).decode


def default_preferences(settings: Settings) -> Preferences:
    """What a customer who never set preferences gets."""
    return Preferences(list(settings.notification_channels), list(TYPES))


async def load_preferences(
    client: aredis.Redis, keys: Keys, customer_ids: Iterable[int]
) -> dict[int, Preferences]:
    """The stored preferences of these customers (those with none are left out), one HMGET."""
    ids = list(dict.fromkeys(customer_ids))
    if not ids:
        return {}
    raws = await client.hmget(keys.notification_preferences, ids)
    return {cid: _decode(raw) for cid, raw in zip(ids, raws, strict=True) if raw}


async def save_preferences(
    client: aredis.Redis, keys: Keys, customer_id: int, preferences: Preferences
) -> None:
    """Store (replace) one customer's preferences."""
    await client.hset(keys.notification_preferences, str(customer_id), _encode(preferences))
