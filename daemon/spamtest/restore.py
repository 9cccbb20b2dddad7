"""Restore after a restart: everything the engine remembers is rebuilt from PostgreSQL —
the active tests and their slots (a test's phones are in its result rows, so each phone
is busy again with every test that has an undecided slot on it), the grace samples,
each phone's canary flag and the queue's fairness.
Must not send (`sending.py` adopts or sends what is missing on the next pass).
"""

from __future__ import annotations

import structlog

from daemon.spamtest import phones
from daemon.spamtest.context import SpamContext
from daemon.spamtest.state import ActiveTest, Slot
from dispatch.spamtests.contract import TestStatus, Verdict

log = structlog.get_logger("spamtests")


async def restore(ctx: SpamContext) -> None:
    """Active tests, grace samples, canary flags and fairness from PostgreSQL."""
    ctx.active.clear()
    ctx.busy.clear()
    for row in await ctx.book.tests_in(TestStatus.ACTIVE):
        test = ActiveTest.of(row, ctx.now())
        test.deadline = ctx.deadline(row)
        # Durations run on the monotonic clock, which says nothing of the time before the
        # restart: a resumed slot's grace and timeout count again from now (a verdict
        # may come later, never early).
        mono = ctx.monotonic()
        test.started_mono = mono
        for result in await ctx.book.results_of(row["id"]):
            slot = Slot.restored(result, row)
            slot.sent_mono = mono if slot.inserted_at is not None else None
            slot.success_mono = mono if slot.success_seen_at is not None else None
            test.slots.append(slot)
        phones.hold(ctx, test.slots, test.id)
        ctx.active[test.id] = test
        log.info("spam test resumed", test=str(test.id), slots=len(test.slots))
    ctx.samples = {}
    for carrier, delay in await ctx.book.receipt_delays(
        list(ctx.phones), ctx.section.grace_samples
    ):
        ctx.sample(carrier, delay)
    for modem, verdict, completed_at in await ctx.book.last_canaries():
        ctx.last_canary[modem] = {"at": completed_at.isoformat(), "verdict": verdict}
        if verdict == Verdict.BLOCKED:
            ctx.flagged[modem] = completed_at
    ctx.last_served = await ctx.book.last_served()
