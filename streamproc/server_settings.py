"""The Redis server settings streamproc is built for, and a check of a running server against them.

The embedded server and the benchmarks' private servers start with these; `deploy/redis.conf`
lists them for a server of your own; `consume` warns at start when a server lacks one.
"""

from __future__ import annotations

from typing import Any

import redis

# Durable: an acknowledged step survives a crash of the server (at most ~1 s lost on power loss).
DURABILITY: tuple[tuple[str, str], ...] = (("appendonly", "yes"), ("appendfsync", "everysec"))
# The AOF is compacted by a forked child writing the whole dataset; on a machine where the
# consumers (or an import) need every core, that child's CPU is taken from them. Without LZF it
# needs 40% less CPU for a 25-35% larger base file (1M rows ingested: 1.2 instead of 2.0 CPU
# seconds, 255 instead of 190 MB): disk is cheaper here than a core.
REWRITES: tuple[tuple[str, str], ...] = (("rdbcompression", "no"),)
# An order hash holds its payload and history (100-300 bytes). Above 64 bytes a field value
# turns the default server's compact listpack hash into a hashtable, ~350 more bytes per order;
# hashes of up to 512 fields (the default) stay compact. A lookup scans a compact hash, which
# costs nothing measurable for an order's few fields; the one hot hash that grows to hundreds
# of fields, the notification leases, is pinned to a hashtable (lib/notification.lua).
HASH_LISTPACK_VALUE = 512
MEMORY: tuple[tuple[str, str], ...] = (("hash-max-listpack-value", str(HASH_LISTPACK_VALUE)),)
RECOMMENDED: tuple[tuple[str, str], ...] = DURABILITY + REWRITES + MEMORY


def server_args(settings: tuple[tuple[str, str], ...] = RECOMMENDED) -> list[str]:
    """The settings as redis-server command-line arguments."""
    return [part for name, value in settings for part in (f"--{name}", value)]


def shortfalls(client: redis.Redis) -> list[str]:
    """What the server lacks of the recommended settings, one sentence each ([] when unknown)."""
    try:
        current: dict[Any, Any] = client.config_get("hash-max-listpack-value")
    except redis.ResponseError:
        return []  # CONFIG is disabled on many managed servers: nothing to say
    # The reply's keys are bytes or str depending on the client's decode_responses.
    value = next(iter(current.values()), None)
    if value is None or int(value) >= HASH_LISTPACK_VALUE:
        return []
    return [
        f"hash-max-listpack-value is {int(value)}: each order then takes ~350 more bytes of "
        f"Redis memory; set it to {HASH_LISTPACK_VALUE} (see deploy/redis.conf)"
    ]
