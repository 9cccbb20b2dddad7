"""The guard pass of one run, streamed ahead of its handoff in ``seq`` order.

Every recipient that must not be sent is marked with its reason (only such exceptions,
and numbers that needed normalising, are written); the rules are
`dispatch.guards.check_page`. Duplicates are found with a set of the numbers seen so far,
so the first occurrence wins; after a restart the set is rebuilt from the recipients
already checked. Progress is ``prepared_upto``; the handoff never passes it. Touches the
databases only through the context's store.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from config.names import MessageType, normalise_phone
from daemon.dispatcher.context import Context
from daemon.dispatcher.state import RunState
from dispatch.guards import check_page
from dispatch.store.runs import Run

log = structlog.get_logger("dispatcher")

# Recipients checked per page.
PREPARE_PAGE = 5000
# After its first page, the pass waits this long at most (once) for the handoff's first
# batch (`RunState.first_batch`): a handoff that cannot write yet must not stop the checking.
FIRST_BATCH_WAIT_S = 1.0


async def guard_pass(ctx: Context, run: Run, state: RunState) -> None:
    message_type = MessageType(run.message_type)
    last = run.prepared_upto
    seen = await ctx.book.checked_numbers(run.id, last) if last else set()
    # The handoff's first batch waits for this pass's first page: that page is one batch,
    # so a run's first rows reach the agents without a whole page being checked first
    # (and the pass then waits for that batch: see FIRST_BATCH_WAIT_S).
    size, first_page = min(PREPARE_PAGE, ctx.settings.batch_size), True
    while True:
        page = await ctx.book.recipients_after(run.id, last, size)
        size = PREPARE_PAGE
        if not page:
            break
        opted: set[str] = set()
        if run.user_id:
            # The web keeps opt-outs per sending user and filters every send by them (AI
            # sends always, direct ones unless switched off; routes/campaigns.ts:679, 1443):
            # the hand-over is filtered already, this catches an opt-out registered since.
            numbers = [normalise_phone(r["phone"]) for r in page]
            opted = await ctx.book.opted_out(run.user_id, numbers)
        checked = check_page(page, message_type, opted, seen)
        await ctx.book.record_checked(run.id, checked)
        last = checked.last_seq
        state.prepared_upto = last
        state.prepared_event.set()
        if first_page and not state.first_batch.is_set():
            with contextlib.suppress(TimeoutError):  # a timeout block keeps a cancel
                async with asyncio.timeout(FIRST_BATCH_WAIT_S):
                    await state.first_batch.wait()
        first_page = False
    skipped = await ctx.book.finish_checking(run.id)
    state.prepared = True
    state.prepared_event.set()
    log.info("run checked", run=str(run.id), skipped=skipped)
