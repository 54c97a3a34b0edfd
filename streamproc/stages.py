"""Stage registry: which handler runs each stage, looked up by name.

Handlers live in the top-level `consumers` package, which imports streamproc; they are named here
as "module:Class" strings and imported on demand so streamproc never imports consumers statically.
"""

from __future__ import annotations

import importlib
from typing import cast

from streamproc.context import StageContext
from streamproc.errors import ConfigError
from streamproc.keys import STAGES
from streamproc.runloop import Handler

HANDLERS: dict[str, str] = {
    "reserve": "consumers.reserve:ReserveHandler",
    "payment": "consumers.payment:PaymentHandler",
    "finalize": "consumers.finalize:FinalizeHandler",
    "rollback": "consumers.rollback:RollbackHandler",
    "notify": "consumers.notify:NotifyHandler",
}

# Messages in flight per process by default: the payment stage waits on a (simulated) remote
# gateway, so it keeps many calls open; the others are CPU/Redis bound and need a couple of batches.
DEFAULT_CONCURRENCY: dict[str, int] = {"payment": 2000}
# Batches in flight per process by default, where not set above. Notify takes five round trips
# per batch (read, preferences, claim, settle, ack) where the others take three or four: with two
# batches it fell behind them under a flood, and finished seconds after the last order with the
# server part idle meanwhile (half of a 200,000-order flood's notifications were left).
BATCHES_IN_FLIGHT: dict[str, int] = {"notify": 4}


def resolve_stages(name: str) -> tuple[str, ...]:
    """'all' or one stage name → the stages to run."""
    if name == "all":
        return STAGES
    if name not in STAGES:
        raise ConfigError(f"unknown stage {name!r}: choose one of {', '.join(STAGES)} or all")
    return (name,)


def load_handler(stage: str, ctx: StageContext) -> Handler:
    """Import and build the handler of `stage`."""
    module_name, _, class_name = HANDLERS[stage].partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cast(Handler, cls(ctx))


def default_concurrency(stage: str, batch_size: int) -> int:
    """Messages in flight for `stage` when --concurrency is not given."""
    return DEFAULT_CONCURRENCY.get(stage, BATCHES_IN_FLIGHT.get(stage, 2) * batch_size)
