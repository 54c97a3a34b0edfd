"""The workflow table: per stage and handler outcome, the new state and where the order goes."""

from __future__ import annotations

from dataclasses import dataclass

from streamproc.models import COMPLETED, FAILED, RESERVED, ROLLED_BACK


@dataclass(frozen=True, slots=True)
class Transition:
    """Result of an outcome: new state ("" = ack only), next stage ("" = none), output stages."""

    to_state: str
    next_stage: str
    outputs: tuple[str, ...]


# Stages no transition feeds: they drain the entries earlier versions left (orders paid, or
# declined and still reserved) and those `dlq retry` puts back.
DRAIN_ONLY: tuple[str, ...] = ("finalize", "rollback")

# The stage that writes terminal orders to the analytics store, and adds completions to the
# leaderboards as it registers each file.
FACTS_STAGE = "snapshot"

# Terminal orders go to the facts stream, which two consumer groups read, each with its own
# idempotency: the snapshot stage's and notify's (keys.READS_FROM). One entry per finished order
# instead of one per reader: about 4% of the server's time per order.
TERMINAL_OUTPUTS: tuple[str, ...] = (FACTS_STAGE,)

TRANSITIONS: dict[tuple[str, str], Transition] = {
    ("reserve", "reserved"): Transition(RESERVED, "payment", ("payment",)),
    ("reserve", "failed"): Transition(FAILED, "", TERMINAL_OUTPUTS),
    # The payment stage settles the reservation itself once the gateway has answered (stock
    # committed, or released when declined): one hop and one atomic step less per order than
    # handing the order on to finalize or rollback, and a charged order is never left waiting.
    ("payment", "completed"): Transition(COMPLETED, "", TERMINAL_OUTPUTS),
    ("payment", "rolled_back"): Transition(ROLLED_BACK, "", TERMINAL_OUTPUTS),
    # Orders an earlier version left paid (or declined, still reserved) wait in these stages.
    ("finalize", "completed"): Transition(COMPLETED, "", TERMINAL_OUTPUTS),
    ("rollback", "rolled_back"): Transition(ROLLED_BACK, "", TERMINAL_OUTPUTS),
    ("notify", "notified"): Transition("", "", ()),
}


def outputs_of(stage: str) -> tuple[str, ...]:
    """Every stage a stage can enqueue into, in a fixed order (for the commit script's KEYS)."""
    seen: list[str] = []
    for (source, _), transition in TRANSITIONS.items():
        if source == stage:
            for target in transition.outputs:
                if target not in seen:
                    seen.append(target)
    return tuple(seen)
