"""What an earlier version's payment stage left behind, for the tests of the stages that drain it.

Before the payment stage settled orders itself, it left an approved order `paid`, handed to
finalize, and a declined one `reserved` (noted in its history a second time), handed to rollback.
`leave_paid_or_declined` takes freshly ingested orders there the same way: the real reserve stage,
then a payment stage with that version's handler and transitions, through the real commit script.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from consumers.payment import charges_of
from streamproc import transport, workflow
from streamproc.connection import async_client
from streamproc.context import StageContext
from streamproc.models import PAID, RESERVED
from streamproc.runloop import Handler, RunLoop
from streamproc.settings import Settings
from streamproc.stages import load_handler
from streamproc.transport import Decision, Message, StageStream
from streamproc.workflow import Transition

EARLIER_PAYMENT: dict[tuple[str, str], Transition] = {
    ("payment", "paid"): Transition(PAID, "finalize", ("finalize",)),
    ("payment", "declined"): Transition(RESERVED, "rollback", ("rollback",)),
}
# The paths of first attempts through that version's workflow.
EARLIER_STATE_PATHS: dict[str, list[str]] = {
    "completed": ["pending", "reserved", "paid", "completed"],
    "rolled_back": ["pending", "reserved", "reserved", "rolled_back"],
    "failed": ["pending", "failed"],
}


class EarlierPaymentHandler:
    """That version's payment stage: the gateway only, the settling left to the next stage."""

    stage = "payment"

    def __init__(self, ctx: StageContext) -> None:
        self.gateway = ctx.gateway

    async def handle(self, batch: list[Message]) -> list[Decision]:
        """Charge each order; paid or declined, as that version noted it (bare outcome)."""
        results = await self.gateway.charge(charges_of(batch))
        return [
            Decision(m, "paid", "ok") if r.approved else Decision(m, "declined", "declined")
            for m, r in zip(batch, results, strict=True)
        ]


async def drain_stage(ctx: StageContext, stage: str, handler: Handler) -> None:
    """Run `stage` with `handler` in this process until its group has nothing left."""
    stream = StageStream(ctx.client, ctx.scripts, ctx.keys, stage, f"earlier-{stage}")
    loop = RunLoop(
        stream, handler, concurrency=400, batch_size=100, block_ms=50, claim_idle_ms=60_000
    )
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    try:
        async with asyncio.timeout(30):
            while True:
                (group,) = await ctx.client.xinfo_groups(ctx.keys.stream(stage))
                if int(group["lag"] or 0) == 0 and int(group["pending"]) == 0:
                    break
                await asyncio.sleep(0.02)
    finally:
        stop.set()
        await task
    assert loop.fatal is None


def drain_as_an_earlier_version(
    settings: Settings,
    table: dict[tuple[str, str], Transition],
    handlers: Callable[[StageContext], list[tuple[str, Handler]]],
) -> None:
    """Run each (stage, handler) in turn in this process until its group has nothing left, with
    `table` as the workflow's transitions (that version's)."""

    async def main() -> None:
        client = async_client(settings.redis_url or "")
        try:
            ctx = StageContext.build(settings, client)
            for stage, handler in handlers(ctx):
                await drain_stage(ctx, stage, handler)
        finally:
            await client.aclose()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(workflow, "TRANSITIONS", table)
        patch.setattr(transport, "TRANSITIONS", table)
        asyncio.run(main())


def leave_paid_or_declined(settings: Settings) -> None:
    """Take every ingested order through reserve and that version's payment stage: what is not
    out of stock waits in the finalize or the rollback stream afterwards."""
    table = {key: t for key, t in workflow.TRANSITIONS.items() if key[0] != "payment"}
    table.update(EARLIER_PAYMENT)
    drain_as_an_earlier_version(
        settings,
        table,
        lambda ctx: [
            ("reserve", load_handler("reserve", ctx)),
            ("payment", EarlierPaymentHandler(ctx)),
        ],
    )


# Before notify read the facts stream, a finished order was enqueued on both streams.
EARLIER_TERMINAL_OUTPUTS = ("notify", "snapshot")


def finish_as_an_earlier_version(settings: Settings) -> None:
    """Reserve and pay every ingested order with the transitions of the version before notify
    read the facts stream: each finished order is enqueued on notify's stream and on the facts
    stream (where that version had no notify group)."""
    table = {
        key: Transition(t.to_state, t.next_stage, EARLIER_TERMINAL_OUTPUTS)
        if t.outputs == workflow.TERMINAL_OUTPUTS
        else t
        for key, t in workflow.TRANSITIONS.items()
    }
    drain_as_an_earlier_version(
        settings, table, lambda ctx: [(s, load_handler(s, ctx)) for s in ("reserve", "payment")]
    )
