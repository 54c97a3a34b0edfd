"""Every Redis key and stream name, built in this one module.

Keys carry hash tags so each multi-key script touches one slot (Redis Cluster ready):
  {ns}        the pipeline: stage streams, order hashes, state counters, dead letters, and the
              analytics that change with it (leaderboards, snapshot manifest, KPI cache)
  {ns:stock}  the stock catalogue and per-order reservation records
  {ns:gw}     the payment gateway's ledger
A script never mixes two tags; effects across tags are idempotent steps keyed by order id.

Per-order records of the stock and gateway slots live in bucket hashes small enough for Redis's
compact listpack encoding (record_bucket): about 20 and 50 bytes per order instead of 60 and 100
in one big hash.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

STAGES: tuple[str, ...] = ("reserve", "payment", "finalize", "rollback", "notify", "snapshot")

# A stage whose group reads another stage's stream first: notify is a second consumer group on the
# snapshot stage's stream of finished orders, so each finished order is one entry for both readers
# instead of one per reader. Its own stream still takes what only it must read (`dlq retry`, and
# what earlier versions wrote there).
READS_FROM: dict[str, str] = {"notify": "snapshot"}

# Orders created in one ms (one ingest batch, 500 by default) are spread over this many buckets:
# about 31 records per bucket hash, well under the 512 entries (hash-max-listpack-entries, the
# default) up to which Redis keeps a hash as one compact listpack, which a lookup scans.
# Consumers handle a stream's orders in about the order they were imported, so a batch of
# messages touches a few buckets, not one per order.
RECORD_BUCKETS = 16


def record_bucket(created_ms: int, order_id: str) -> str:
    """The bucket of an order's reservation and ledger records (`<created ms>:<slice>`), from
    its hash's field c; "" when unknown (stream entries written before buckets)."""
    if created_ms <= 0:
        return ""
    return f"{created_ms}:{zlib.crc32(order_id.encode()) % RECORD_BUCKETS}"


def bucket_keys(
    buckets: Iterable[str], key_of: Callable[[str], str], legacy: int, base: int
) -> tuple[list[str], list[int]]:
    """A batch's distinct bucket keys, and per item the 1-based KEYS index lib/buckets.lua takes:
    `legacy` (the old single hash) for bucket "", else `base` + the bucket key's position."""
    index: dict[str, int] = {}
    keys: list[str] = []
    slots: list[int] = []
    for bucket in buckets:
        if not bucket:
            slots.append(legacy)
            continue
        slot = index.get(bucket)
        if slot is None:
            slot = index[bucket] = base + len(keys)
            keys.append(key_of(bucket))
        slots.append(slot)
    return keys, slots


# The four keys of one currency's leaderboards, by suffix (see Keys.leaderboard).
BOARDS: tuple[str, ...] = ("customers", "customer_info", "products", "product_info")


@dataclass(frozen=True, slots=True)
class Keys:
    """Key builder for one namespace."""

    namespace: str = "sp"

    @property
    def _pipe(self) -> str:
        return "{" + self.namespace + "}"

    # -- pipeline slot -------------------------------------------------------------------------
    def stream(self, stage: str) -> str:
        """A stage's own stream: what the stage reads and no other stage does."""
        return f"{self._pipe}:stream:{stage}"

    def sources(self, stage: str) -> tuple[str, ...]:
        """The streams a stage's consumer group reads, the one its work arrives on first."""
        shared = READS_FROM.get(stage)
        if shared is None:
            return (self.stream(stage),)
        return (self.stream(shared), self.stream(stage))

    @staticmethod
    def group(stage: str) -> str:
        """The consumer group name of a stage, on each stream it reads (Keys.sources)."""
        return stage

    def order(self, order_id: str) -> str:
        """Hash holding one order: state, workflow position, payload, history."""
        return f"{self._pipe}:order:{order_id}"

    def ingest_stop_marker(self, token: str) -> str:
        """Short-lived key telling one import's batches still in flight that it stopped."""
        return f"{self._pipe}:ingest:stopped:{token}"

    @property
    def ingest_rows(self) -> str:
        """Hash outcome (imported, duplicate, rejected) → CSV rows, counted by every import."""
        return f"{self._pipe}:ingest:rows"

    @property
    def order_pattern(self) -> str:
        """SCAN pattern matching every order hash."""
        return f"{self._pipe}:order:*"

    @property
    def order_prefix(self) -> str:
        """Prefix of every order hash (order id follows)."""
        return f"{self._pipe}:order:"

    @property
    def state_counts(self) -> str:
        """Hash state → number of orders in it, kept by the scripts (O(1) status)."""
        return f"{self._pipe}:counts"

    def day(self, day: str) -> str:
        """Hash of one UTC day's counters (orders in, terminal states, revenue per currency)."""
        return f"{self._pipe}:day:{day}"

    @property
    def dead_letters(self) -> str:
        """The dead-letter stream."""
        return f"{self._pipe}:dlq"

    @property
    def notifications(self) -> str:
        """Hash `<order>:<type>:<channel>` → notification record (streamproc.notifications), but
        for the records sent at their first attempt: notification_sent_stream keeps those."""
        return f"{self._pipe}:notifications"

    @property
    def notification_leases(self) -> str:
        """Hash notification id → owner|expiry (|log offset|attempts for a first attempt, whose
        record does not exist yet): who may send it right now."""
        return f"{self._pipe}:notifications:leases"

    # -- notifications (records, their indexes, retries, preferences) --------------------------
    def notification_index(self, kind: str, channel: str, status: str) -> str:
        """Sorted set record id → creation score of the records of one type, channel and status.

        Each record is in exactly one of these 12 sets, so their sizes are the stats (O(1)) and a
        filtered page merges at most 12 time-ordered sets. Scripts build the names from
        notification_index_prefix, so the two must agree.
        """
        return f"{self.notification_index_prefix}{kind}:{channel}:{status}"

    @property
    def notification_index_prefix(self) -> str:
        """Start of every notification_index (and notification_sent_stream) key name."""
        return f"{self._pipe}:notifications:ix:"

    def notification_sent_stream(self, kind: str, channel: str) -> str:
        """Stream of the records of one type and channel sent at their first attempt, each entry
        (id = creation score as `<ms>-<tie-breaker>`, field i = order id, field r = the record's
        text) standing in for their records-hash field and sent-set member: ~70 bytes instead of
        ~245. Scripts build the name from notification_index_prefix (lua/lib/notification.lua),
        so the two must agree."""
        return f"{self.notification_index_prefix}{kind}:{channel}:sent:stream"

    @property
    def notification_sent_days(self) -> str:
        """Hash `<type>:<channel>:<epoch day>` → entries of that sent stream created that UTC day
        (the totals over dates, which a stream cannot count)."""
        return f"{self.notification_index_prefix}days"

    def notification_customer(self, customer_id: int) -> str:
        """Sorted set record id → creation score of one customer's records."""
        return f"{self.notification_customer_prefix}{customer_id}"

    @property
    def notification_customer_prefix(self) -> str:
        """Start of every notification_customer key name (scripts append the customer id)."""
        return f"{self._pipe}:notifications:customer:"

    @property
    def notification_schedule(self) -> str:
        """Sorted set record id → ms when a pending record is due (a retry, or a lease expiry)."""
        return f"{self._pipe}:notifications:due"

    @property
    def notification_clock(self) -> str:
        """The last creation score handed out, so scores are unique and increasing."""
        return f"{self._pipe}:notifications:clock"

    @property
    def notification_preferences(self) -> str:
        """Hash customer id → that customer's notification preferences (JSON)."""
        return f"{self._pipe}:notifications:prefs"

    def throughput(self, second: int) -> str:
        """Counter of orders reaching a terminal state in one epoch second (expires in minutes)."""
        return f"{self._pipe}:tput:{second}"

    def stage_window(self, start_s: int) -> str:
        """Hash of every consumer's stage counts for the window starting at that epoch second:
        `<stage>:n` messages settled, `<stage>:le:<bound>` batches by processing time (expires
        in minutes; the API's per-stage rates and p95)."""
        return f"{self._pipe}:window:{start_s}"

    # -- analytics (same slot: kept by the pipeline's scripts) ---------------------------------
    @property
    def snapshot_files(self) -> str:
        """Hash file name → JSON about it: the snapshot store's manifest (what readers list)."""
        return f"{self._pipe}:analytics:files"

    @property
    def snapshot_version(self) -> str:
        """Counter bumped whenever the manifest gains facts (cache entries carry it)."""
        return f"{self._pipe}:analytics:version"

    @property
    def snapshot_trash(self) -> str:
        """Sorted set file name → ms it left the manifest (deleted from disk a while later)."""
        return f"{self._pipe}:analytics:trash"

    @property
    def kpi_cache(self) -> str:
        """Hash `<version>|<query>` → cached KPI JSON; deleted when a snapshot lands."""
        return f"{self._pipe}:kpi:cache"

    def leaderboard(self, currency: str, board: str, staging: bool = False) -> str:
        """One of a currency's leaderboard keys (`board` from BOARDS); `staging` = a rebuild's.

        customers: zset customer id → total spent (cents); customer_info: hash customer id →
        `<orders>|<first order date>|<order_date>|<order_id>|<name>`, the order and name being the
        latest (analytics.leaderboard.read_card); products: zset SKU → units sold; product_info:
        hash SKU → `<revenue cents>|<orders>|<order_date>|<order_id>|<name>`, of the latest order
        with a named line (read_product_card; before cards: `<sku>:r`, `:n`, `:k`, `:name`, still
        read). The scripts build these names from leaderboard_prefix, so the two must agree.
        """
        return f"{self.leaderboard_prefix(staging)}{currency}:{board}"

    def leaderboard_prefix(self, staging: bool = False) -> str:
        """Start of every leaderboard key name (the live boards, or a rebuild's staging copy)."""
        return f"{self._pipe}:{'lbnext' if staging else 'lb'}:"

    def leaderboard_currencies(self, staging: bool = False) -> str:
        """Set of the currencies that have leaderboards."""
        return f"{self.leaderboard_prefix(staging)}currencies"

    @property
    def leaderboard_pending(self) -> str:
        """Hash registered file name → `<chunks applied>|<chunks>|<rows per chunk>|<ms>|<seqs>`
        while the file's completions are being added to the boards a chunk at a time
        (lb_apply.lua); `seqs` (comma-separated) are its facts an earlier version had counted."""
        return f"{self._pipe}:lb:pending"

    @property
    def leaderboard_rebuild(self) -> str:
        """Marker (with a TTL) while a rebuild runs: the snapshot stage holds new files back so
        the rebuild's source stays fixed (an earlier version's commits add to the staging
        boards too)."""
        return f"{self._pipe}:lb:rebuild"

    # -- stock slot ----------------------------------------------------------------------------
    @property
    def _stock(self) -> str:
        return "{" + self.namespace + ":stock}"

    def stock(self, column: str) -> str:
        """Hash SKU → value for one stock column (available, reserved, committed, initial)."""
        return f"{self._stock}:{column}"

    @property
    def stock_meta(self) -> str:
        """Hash SKU → JSON of name and price."""
        return f"{self._stock}:meta"

    @property
    def reservations(self) -> str:
        """Hash reservation key (order id + attempt) → record of what that reservation did, for
        records written before buckets (reservation_bucket)."""
        return f"{self._stock}:reservations"

    def reservation_bucket(self, bucket: str) -> str:
        """The bucket hash of reservation records (record_bucket); the old hash for bucket ""."""
        return f"{self._stock}:rsv:{bucket}" if bucket else self.reservations

    # -- gateway slot --------------------------------------------------------------------------
    @property
    def _gateway(self) -> str:
        return "{" + self.namespace + ":gw}"

    @property
    def gateway_ledger(self) -> str:
        """Hash idempotency key → first result (the gateway's ledger), for results recorded
        before buckets (gateway_bucket)."""
        return f"{self._gateway}:ledger"

    def gateway_bucket(self, bucket: str) -> str:
        """The bucket hash of ledger results (record_bucket); the old hash for bucket ""."""
        return f"{self._gateway}:ledger:{bucket}" if bucket else self.gateway_ledger

    @property
    def gateway_stats(self) -> str:
        """Hash of gateway counters (calls, peak in flight) for tests and status."""
        return f"{self._gateway}:stats"
