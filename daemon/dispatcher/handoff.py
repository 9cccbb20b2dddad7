"""The handoff of one run: batches from its recipients into its group's agent tables,
exactly once, as a supervised task.

Owns the batch loop: pages of pending recipients in ``seq`` order (keyset pages, bounded
memory), planned over the group's healthy agents within each agent's backlog bound
(`dispatch/planner.py`), written, then checkpointed. The highest seq ever written ahead
of its checkpoint is recorded first (``verify_until``), so after a crash or a failed
batch the window is known whatever the batch sizes, and that window is looked up in the
agent tables before anything is inserted again. While one batch is written the next is
planned (read, spread, staged in its LOAD DATA files); only one batch is ever past its
checkpoint. A batch and a control of the same run never interleave (the run's lock).

`supervise` keeps the task alive: a handoff that dies is logged with its error and
counted, and restarted after a capped backoff, never silently. Touches the databases only
through the context's seams (`ports.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import structlog

from config.names import MessageType
from daemon.dispatcher import controls
from daemon.dispatcher.context import ERRORS, Context, row_key
from daemon.dispatcher.guard_pass import guard_pass
from daemon.dispatcher.state import RunState
from daemon.supervisor import DependencyDown
from dispatch.guards import in_ad_window
from dispatch.handoff import BatchRejected, StagedRows
from dispatch.planner import Plan, RunRowFields, needs_lookup, plan_page, room_left
from dispatch.store.runs import Run, RunStatus

log = structlog.get_logger("dispatcher")

# Seconds between COUNTs of an agent table's waiting rows while a run inserts.
WAITING_RECOUNT_S = 2.0
# Every agent full (or down): how long to wait before looking for room again.
NO_ROOM_WAIT_S = 0.5
# Caught up with the guard pass: how long to wait for it to check more recipients.
GUARD_WAIT_S = 1.0
# A pass interrupted by an outage is retried after this, doubling up to the cap; a pass
# that wrote a batch before failing starts again from the first step.
RETRY_FIRST_S, RETRY_MAX_S = 0.5, 5.0
# A handoff task that died of an unexpected error is restarted after this, doubling with
# each failure in a row up to the cap (a crash loop must not spin).
RESTART_FIRST_S, RESTART_MAX_S = 1.0, 60.0


@dataclass(slots=True)
class Batch:
    """One planned batch: the agents it was planned for, the plan and its staged rows."""

    healthy: list[int]
    plan: Plan
    staged: dict[str, StagedRows] = field(default_factory=dict)

    def discard(self) -> None:
        for staged in self.staged.values():
            staged.discard()


# ---- supervision ------------------------------------------------------------------------


def supervise(ctx: Context, state: RunState) -> None:
    """Make sure a sending run has a handoff task (called on every pass of the main loop
    and on a grant); a task that failed is restarted only after its backoff."""
    if state.handoff is not None and not state.handoff.done():
        return
    state.handoff = None
    if ctx.monotonic() < state.handoff_retry_at:
        return
    written = state.batches
    task = asyncio.create_task(run_handoff(ctx, state), name=f"handoff-{state.id}")
    task.add_done_callback(lambda t: _finished(ctx, state, t, written))
    state.handoff = task


def _finished(ctx: Context, state: RunState, task: asyncio.Task[None], written: int) -> None:
    """A handoff task ended: read its outcome, so that a failure is never silent."""
    if task.cancelled():
        return
    exc = task.exception()
    # A task that wrote something, or ended normally, breaks a run of failures.
    streak = 0 if exc is None or state.batches > written else state.handoff_streak
    if exc is None:
        state.handoff_streak, state.handoff_retry_at = 0, float("-inf")
        return
    state.handoff_streak = streak + 1
    state.handoff_failures += 1
    ctx.handoff_failures += 1
    state.handoff_error = f"{type(exc).__name__}: {exc}"
    delay = min(RESTART_FIRST_S * 2 ** (state.handoff_streak - 1), RESTART_MAX_S)
    state.handoff_retry_at = ctx.monotonic() + delay
    log.error(
        "handoff failed; restarting it",
        run=str(state.id),
        error=state.handoff_error,
        failures=state.handoff_failures,
        restart_in_s=delay,
        exc_info=exc,
    )


def _guard_pass_finished(task: asyncio.Task[None]) -> None:
    # Read here so that a failure is logged even if the handoff stops before it would
    # re-raise it (it restarts the guard pass on its next pass).
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.warning(
            "guard pass interrupted", task=task.get_name(), error=f"{type(exc).__name__}: {exc}"
        )


async def stop_all(ctx: Context) -> None:
    """Cancel every handoff and guard pass (the component is stopping)."""
    states = list(ctx.registry.runs.values())
    tasks = [t for s in states for t in (s.handoff, s.guard_pass) if t is not None]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for state in states:
        state.handoff = state.guard_pass = None


# ---- the handoff ------------------------------------------------------------------------


async def run_handoff(ctx: Context, state: RunState) -> None:
    """Passes until the run is fully inserted or must stop; an outage interrupts a pass,
    which is retried (what the interrupted batch may have written is up to
    ``verify_until``: looked up next time)."""
    delay = RETRY_FIRST_S
    while True:
        written = state.batches
        try:
            await handoff_pass(ctx, state)
            return
        except ERRORS as exc:
            log.warning(
                "handoff interrupted; will reconcile and continue",
                run=str(state.id),
                error=f"{type(exc).__name__}: {exc}",
            )
        except DependencyDown as exc:
            log.warning("handoff waiting for a dependency", run=str(state.id), error=str(exc))
        except BatchRejected as exc:
            # A row the server will not take is rejected again on every retry: stop the
            # run (what the batch's other tables took is pulled back) and say why.
            reason = f"agent table rejected {exc}"
            log.error("batch rejected: run paused", run=str(state.id), reason=reason)
            try:
                await controls.control(ctx, state.id, "pause", reason)
                return
            except (*ERRORS, DependencyDown) as stop_exc:  # retried: the batch fails again
                log.warning(
                    "pausing a rejected run failed",
                    run=str(state.id),
                    error=f"{type(stop_exc).__name__}: {stop_exc}",
                )
        if state.batches > written:
            delay = RETRY_FIRST_S
        await ctx.sleep(delay)
        delay = min(delay * 2, RETRY_MAX_S)


async def handoff_pass(ctx: Context, state: RunState) -> None:
    """Insert batches until the run is fully inserted (then it drains) or must stop: its
    status changed, its lease was lost, or the advertising window closed."""
    run = await ctx.book.run(state.id)
    if run is None or run.status != RunStatus.SENDING or not run.line_group:
        return
    state.prepared = run.prepared
    state.prepared_upto = run.prepared_upto
    state.verify_until = run.verify_until
    if not state.prepared and (state.guard_pass is None or state.guard_pass.done()):
        state.guard_pass = asyncio.create_task(
            guard_pass(ctx, run, state), name=f"guard-pass-{state.id}"
        )
        state.guard_pass.add_done_callback(_guard_pass_finished)
    group = run.line_group
    ahead: Batch | None = None  # planned while the previous batch was being written
    try:
        while True:
            if state.lease_lost:
                log.warning("lease lost: inserting stopped", run=str(state.id), group=group)
                return
            if run.is_ad and not in_ad_window(ctx.now()):
                ctx.wake.set()
                return
            async with ctx.registry.lock(state.id):
                if await ctx.book.status_of(state.id) != RunStatus.SENDING:
                    return
                # What the batch below is planned against: a guard pass that ends while its
                # page is read must not turn "nothing checked yet" into "nothing left".
                prepared, checked = state.prepared, state.prepared_upto
                state.prepared_event.clear()
                healthy = ctx.healthy(group)
                batch: Batch | int
                if not healthy:
                    batch = -1
                elif ahead is not None and ahead.healthy == healthy:
                    batch = ahead
                else:
                    batch = await next_batch(ctx, state, run, healthy)
                if ahead is not None and batch is not ahead:
                    ahead.discard()
                ahead = None
                if isinstance(batch, int):
                    inserted = batch
                else:
                    inserted, ahead = await commit_and_plan(ctx, state, run, batch)
            if inserted == 0 and not prepared:
                if checked:  # all it checked so far is skipped or in: it must go on
                    state.first_batch.set()
                if state.guard_pass is not None and state.guard_pass.done():
                    state.guard_pass.result()  # re-raise a failed guard pass
                with contextlib.suppress(TimeoutError):  # set since the snapshot: at once
                    async with asyncio.timeout(GUARD_WAIT_S):  # keeps a cancel (not wait_for)
                        await state.prepared_event.wait()
                continue
            if inserted == 0:
                await ctx.set_status(state.id, RunStatus.DRAINING, None)
                log.info("run fully inserted; draining", run=str(state.id), group=group)
                ctx.wake.set()
                return
            if inserted < 0:
                await ctx.sleep(NO_ROOM_WAIT_S)
    finally:
        if ahead is not None:
            ahead.discard()


async def commit_and_plan(
    ctx: Context, state: RunState, run: Run, batch: Batch
) -> tuple[int, Batch | None]:
    """Write `batch` and, while the servers load it, plan the one after it.

    Only one batch is ever being written without its checkpoint, so a crash leaves at
    most one batch for the next start to look up. The planned batch's last seq goes into
    this batch's checkpoint as its ``verify_until`` (`commit_batch`), so that it needs no
    statement of its own before it is written."""
    following: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    commit = asyncio.create_task(commit_batch(ctx, state, batch, following))
    ahead: Batch | None = None
    try:
        if batch.plan.pulled_seqs is None and (
            state.prepared or batch.plan.last_seq < state.prepared_upto
        ):
            planned = await next_batch(ctx, state, run, batch.healthy, after=batch.plan.last_seq)
            ahead = planned if isinstance(planned, Batch) else None
    except BaseException:
        following.set_result(0)
        await asyncio.gather(commit, return_exceptions=True)
        raise
    following.set_result(0 if ahead is None else ahead.plan.last_seq)
    try:
        inserted = await commit
    except BaseException:
        if ahead is not None:
            ahead.discard()
        raise
    return inserted, ahead


async def next_batch(
    ctx: Context, state: RunState, run: Run, healthy: list[int], after: int | None = None
) -> Batch | int:
    """The next batch, planned and staged; 0 when nothing is left, -1 when no agent has
    room. Pulled-back recipients go first, then the pending ones after the checkpoint
    (`after`: plan the batch that follows one still being written, ending at that seq)."""
    settings = ctx.settings
    tables = {n: ctx.agent_table(n) for n in healthy}
    room = room_left(settings.backlog_bound, tables, state.waiting)
    stale = ctx.monotonic() - state.counted_at > WAITING_RECOUNT_S
    if after is None and (stale or sum(room.values()) < settings.batch_size):
        state.waiting = await ctx.tables.waiting_counts(list(tables.values()))
        state.counted_at = ctx.monotonic()
        room = room_left(settings.backlog_bound, tables, state.waiting)
    capacity = min(settings.batch_size, sum(room.values()))
    page = []
    if after is None:
        page = list(await ctx.book.pulled_page(state.id, max(capacity, 1)))
        if not page:
            after = await ctx.book.checkpoint(state.id)
    if not page:
        checked_upto = None if state.prepared else state.prepared_upto
        page = list(
            await ctx.book.pending_page(state.id, after or 0, max(capacity, 1), checked_upto)
        )
    if not page:
        return 0
    if capacity == 0:
        return -1
    found: set[str] = set()
    if needs_lookup(page[0]["seq"], bool(page[0]["pulled"]), state.verify_until, after or 0):
        assert run.line_group is not None
        group_tables = ctx.tables_of(run.line_group)
        every = [*group_tables, *ctx.log_window(run, group_tables)]
        seqs = (min(r["seq"] for r in page), max(r["seq"] for r in page))
        found = await ctx.tables.committed(every, row_key(run), [r["number"] for r in page], seqs)
        if found:
            log.info(
                "rows found in the agent tables before inserting",
                run=str(state.id),
                rows=len(found),
            )
    fields = RunRowFields(
        run.callback_number,
        MessageType(run.message_type).agent_code,
        row_key(run),
        run.company_id,
    )
    plan = plan_page(page, found, room, tables, fields)
    batch = Batch(list(healthy), plan)
    for table, rows in plan.rows.items():
        state.waiting[table] = state.waiting.get(table, 0) + len(rows)
        batch.staged[table] = ctx.tables.stage(rows)
    return batch


async def commit_batch(
    ctx: Context, state: RunState, batch: Batch, following: asyncio.Future[int] | None = None
) -> int:
    """Write a planned batch (one statement per agent table, in parallel) and move the
    checkpoint past it; with it, raise ``verify_until`` to `following`'s seq (the last of
    the batch planned meanwhile, 0 for none), which that batch then need not record
    before it goes out. Returns its size, or -1 when the lease was lost."""
    if state.lease_lost:
        batch.discard()
        return -1
    plan = batch.plan
    if plan.pulled_seqs is None and plan.last_seq > state.verify_until:
        # Recorded before writing: after a crash, everything up to here is looked up.
        await ctx.book.record_verify_until(state.id, plan.last_seq)
        state.verify_until = plan.last_seq
    started = time.perf_counter()
    seqs = (plan.first_seq, plan.last_seq)
    if plan.pulled_seqs:
        seqs = (min(plan.pulled_seqs), max(plan.pulled_seqs))
    try:
        # One connection per agent table: the server loads them in parallel. Every write
        # is let finish (commit or roll back) before a failure is raised: a retry that
        # looked the batch up while a sibling still ran would insert its rows again.
        outcomes = await asyncio.gather(
            *(ctx.tables.write(t, s, seqs) for t, s in batch.staged.items()),
            return_exceptions=True,
        )
        for outcome in outcomes:
            if isinstance(outcome, BatchRejected):
                raise BatchRejected(f"batch seq {seqs[0]}-{seqs[1]}: {outcome}") from outcome
            if isinstance(outcome, BaseException):
                raise outcome
        upto = 0 if following is None else await following
        await ctx.book.record_batch(
            state.id, plan.size, plan.last_seq, plan.pulled_seqs, verify_until=upto
        )
        state.verify_until = max(state.verify_until, upto)
    finally:
        batch.discard()
    ctx.count_batch(plan.rows, time.perf_counter() - started)
    state.batches += 1
    state.first_batch.set()
    return plan.size
