"""The workflow table: per stage and handler outcome, the new state and where the order goes."""

from __future__ import annotations

from dataclasses import dataclass

from streamproc.models import COMPLETED, FAILED, PAID, RESERVED, ROLLED_BACK


@dataclass(frozen=True, slots=True)
class Transition:
    """Result of an outcome: new state ("" = ack only), next stage ("" = none), output stages."""

    to_state: str
    next_stage: str
    outputs: tuple[str, ...]


# Terminal orders fan out to these stages (each with its own idempotency).
TERMINAL_OUTPUTS: tuple[str, ...] = ("notify", "snapshot")

TRANSITIONS: dict[tuple[str, str], Transition] = {
    ("reserve", "reserved"): Transition(RESERVED, "payment", ("payment",)),
    ("reserve", "failed"): Transition(FAILED, "", TERMINAL_OUTPUTS),
    ("payment", "paid"): Transition(PAID, "finalize", ("finalize",)),
    # A declined payment keeps the order reserved until the rollback stage releases its stock.
    ("payment", "declined"): Transition(RESERVED, "rollback", ("rollback",)),
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
