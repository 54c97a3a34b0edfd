"""Where Redis memory goes after a run: MEMORY USAGE of every key, summed by family."""

from __future__ import annotations

import redis

from streamproc.keys import STAGES, Keys

SENT_STREAMS = "notification sent streams"


def families(keys: Keys) -> list[tuple[str, str]]:
    """(family, key-name prefix) pairs, most specific prefix first (the sent streams share the
    index sets' prefix: `family_of` tells them apart by their ending)."""
    ledger_slot = keys.gateway_ledger.rsplit(":", 1)[0] + ":"
    stock_slot = keys.stock("")  # every key of the stock slot starts so
    pairs = [
        ("order hashes", keys.order_prefix),
        ("notification records", keys.notifications),
        ("notification indexes", keys.notification_index_prefix),
        ("notification customer indexes", keys.notification_customer_prefix),
        ("leaderboards", keys.leaderboard_prefix()),
        ("stock reservations", keys.reservations),
        ("stock reservations", keys.reservation_bucket(":")[:-1]),  # every bucket: "…:rsv:"
        ("stock", stock_slot),
        ("simulated gateway", ledger_slot),
        ("dead letters", keys.dead_letters),
    ]
    pairs += [("streams", keys.stream(stage)) for stage in STAGES]
    # notifications (the records hash) is a prefix of its index names: test those first.
    return sorted(pairs, key=lambda pair: -len(pair[1]))


def family_of(name: str, prefixes: list[tuple[str, str]], keys: Keys) -> str:
    """The family of key `name`, given families(keys)."""
    stream_end = keys.notification_sent_stream("", "")[len(keys.notification_index_prefix) + 1 :]
    if name.startswith(keys.notification_index_prefix) and name.endswith(stream_end):
        return SENT_STREAMS
    return next((f for f, prefix in prefixes if name.startswith(prefix)), "other")


def memory_by_family(client: redis.Redis, keys: Keys, batch: int = 1000) -> dict[str, int]:
    """Bytes per key family (MEMORY USAGE with every element counted), largest first."""
    prefixes = families(keys)
    totals: dict[str, int] = {}
    names = [bytes(k).decode() for k in client.scan_iter(count=batch)]
    for start in range(0, len(names), batch):
        chunk = names[start : start + batch]
        pipe = client.pipeline(transaction=False)
        for name in chunk:
            pipe.memory_usage(name, samples=0)
        for name, used in zip(chunk, pipe.execute(), strict=True):
            family = family_of(name, prefixes, keys)
            totals[family] = totals.get(family, 0) + int(used or 0)
    return dict(sorted(totals.items(), key=lambda item: -item[1]))
