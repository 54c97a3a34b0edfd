"""Every Redis key and stream name, built in this one module.

Keys carry hash tags so each multi-key script touches one slot (Redis Cluster ready):
  {ns}        the pipeline: stage streams, order hashes, state counters, dead letters
  {ns:stock}  the stock catalogue and per-order reservation records
  {ns:gw}     the payment gateway's ledger
A script never mixes two tags; effects across tags are idempotent steps keyed by order id.
"""

from __future__ import annotations

from dataclasses import dataclass

STAGES: tuple[str, ...] = ("reserve", "payment", "finalize", "rollback", "notify")


@dataclass(frozen=True, slots=True)
class Keys:
    """Key builder for one namespace."""

    namespace: str = "sp"

    @property
    def _pipe(self) -> str:
        return "{" + self.namespace + "}"

    # -- pipeline slot -------------------------------------------------------------------------
    def stream(self, stage: str) -> str:
        """The stream a stage's consumer group reads."""
        return f"{self._pipe}:stream:{stage}"

    @staticmethod
    def group(stage: str) -> str:
        """The consumer group name of a stage (one group per stream)."""
        return stage

    def order(self, order_id: str) -> str:
        """Hash holding one order: state, workflow position, payload, history."""
        return f"{self._pipe}:order:{order_id}"

    def ingest_stop_marker(self, token: str) -> str:
        """Short-lived key telling one import's batches still in flight that it stopped."""
        return f"{self._pipe}:ingest:stopped:{token}"

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
        """Hash (order, type, channel) → notification record."""
        return f"{self._pipe}:notifications"

    @property
    def notification_leases(self) -> str:
        """Hash notification id → owner|expiry: who may send it right now."""
        return f"{self._pipe}:notifications:leases"

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
        """Hash reservation key (order id + attempt) → record of what that reservation did."""
        return f"{self._stock}:reservations"

    # -- gateway slot --------------------------------------------------------------------------
    @property
    def _gateway(self) -> str:
        return "{" + self.namespace + ":gw}"

    @property
    def gateway_ledger(self) -> str:
        """Hash idempotency key → first result (the gateway's ledger)."""
        return f"{self._gateway}:ledger"

    @property
    def gateway_charges(self) -> str:
        """Hash order id → number of successful charges the gateway applied."""
        return f"{self._gateway}:charges"

    @property
    def gateway_stats(self) -> str:
        """Hash of gateway counters (calls, peak in flight) for tests and status."""
        return f"{self._gateway}:stats"
