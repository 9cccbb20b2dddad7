"""Operator controls and holds: pause, cancel, hold (pull back unpicked rows), resume;
draining an agent.

Stopping a run pulls its rows that no agent has picked up out of the agent tables and
marks those recipients pulled, so `resume` re-inserts them first and nothing an agent
had already taken is sent again. The night hold and the circuit breaker use the same
path. Touches the databases only through the context's seams.
"""

from __future__ import annotations

import uuid
from typing import Any

import structlog

from daemon.dispatcher.context import Context, row_key
from daemon.supervisor import DependencyDown
from dispatch.ledger import PullEntry
from dispatch.store.runs import ACTIVE, FINISHED, HOLDS_GROUP, Run, RunStatus

log = structlog.get_logger("dispatcher")

STOPS = {"cancel": RunStatus.CANCELLED, "pause": RunStatus.PAUSED, "hold": RunStatus.HELD}


async def control(
    ctx: Context, run_id: uuid.UUID, action: str, reason: str | None = None
) -> dict[str, Any]:
    """cancel, pause, hold or resume a run; KeyError for a run of another node (or none)."""
    if not ctx.is_writer():
        # Its status would say stopped while its rows stay in the agent tables.
        raise DependencyDown("this daemon is passive: another daemon is the node's writer")
    run = await ctx.book.run(run_id)
    if run is None or run.node_id != ctx.node_id:
        raise KeyError(f"no run {run_id} on this node")
    if action == "resume":
        if run.status not in (RunStatus.PAUSED, RunStatus.HELD):
            return {"run_id": str(run_id), "status": run.status.value, "resumed": False}
        await ctx.set_status(run_id, RunStatus.QUEUED, None)
        ctx.wake.set()
        return {"run_id": str(run_id), "status": RunStatus.QUEUED.value, "resumed": True}
    target = STOPS[action]
    if run.status in FINISHED:
        return {
            "run_id": str(run_id),
            "status": run.status.value,
            "stopped": 0,
            "already_gone": run.inserted_count,
        }
    # The run lock is held by the handoff for each batch: taking it waits for the batch
    # in flight to be inserted and checkpointed; the handoff then sees the new status
    # and stops by itself (cancelling it mid-batch would lose that checkpoint).
    async with ctx.registry.lock(run_id):
        await ctx.set_status(run_id, target, reason)
        entries: list[PullEntry] = []
        if run.line_group:
            # The deletes and their ledger entries commit together; PostgreSQL's marks
            # follow, and an interruption in between is finished by `finish_pulls`.
            tables = await run_tables(ctx, run)
            async with ctx.registry.group_lock(run.line_group):
                entries = await ctx.tables.pull_back(tables, row_key(run))
        pulled = [n for e in entries for n in e.numbers]
        stopped, gone = await ctx.book.record_pull_back(run_id, pulled, target, reason)
        await ctx.tables.close_pulls(entries)
        if run.line_group and run.status in HOLDS_GROUP and ctx.has_group(run.line_group):
            await ctx.leases.release(run.line_group, str(run_id))
    log.info(
        "run stopped",
        run=str(run_id),
        action=action,
        stopped=stopped,
        already_gone=gone,
        reason=reason,
    )
    ctx.wake.set()
    return {"run_id": str(run_id), "status": target.value, "stopped": stopped, "already_gone": gone}


async def run_tables(ctx: Context, run: Run) -> list[str]:
    """Every live table the run may have rows in: its group's (when it is still
    configured) and every table the ledger says it wrote to or failover moved it to."""
    tables = (
        ctx.tables_of(run.line_group) if run.line_group and ctx.has_group(run.line_group) else []
    )
    for table in await ctx.tables.tables_written(str(run.id)):
        if table not in tables:
            tables.append(table)
    return tables


async def finish_pulls(ctx: Context) -> int:
    """Finish the pull-backs interrupted between the agent tables and PostgreSQL (a crash,
    an outage): their rows left the tables with a ledger entry, so mark those recipients
    pulled now (re-inserted first on resume). Returns the recipients marked."""
    entries = await ctx.tables.open_pulls()
    if not entries:
        return 0
    by_run: dict[str, list[PullEntry]] = {}
    for entry in entries:
        by_run.setdefault(entry.run_ref, []).append(entry)
    marked = 0
    for ref, found in by_run.items():
        run_id = uuid.UUID(ref)
        async with ctx.registry.lock(run_id):
            count = await ctx.book.mark_pulled(run_id, [n for e in found for n in e.numbers])
            await ctx.tables.close_pulls(found)
        log.warning("interrupted pull-back finished", run=ref, recipients=count)
        marked += count
    return marked


async def pull_back_stopped(ctx: Context, runs: list[Run]) -> int:
    """After a start: pull back what still waits of runs a control stopped (paused, held,
    cancelled) when the daemon died before the pull-back committed (its status was set
    first, so the intent survived). Returns the recipients pulled."""
    pulled = 0
    for run in runs:
        if run.status not in STOPS.values() or not run.line_group:
            continue
        if run.status == RunStatus.CANCELLED and not run.awaiting_results:
            continue
        async with ctx.registry.lock(run.id):
            tables = await run_tables(ctx, run)
            # A plain count first: the locking pull-back only where something still waits.
            present = await ctx.tables.existing(tables)
            if not present or not await ctx.tables.run_waiting(present, row_key(run)):
                continue
            async with ctx.registry.group_lock(run.line_group):
                entries = await ctx.tables.pull_back(tables, row_key(run))
            if not entries:
                continue
            count = await ctx.book.mark_pulled(run.id, [n for e in entries for n in e.numbers])
            await ctx.tables.close_pulls(entries)
        log.warning("interrupted stop finished: rows pulled back", run=str(run.id), rows=count)
        pulled += count
    return pulled


# The web service cancels a campaign by its status (campaign-lifecycle.ts:126-138) after
# deleting the waiting rows it can see; the node stops the run as `run cancel` would.
WEB_CANCEL_REASON = "cancelled by the web service"


async def cancel_what_the_web_cancelled(ctx: Context) -> int:
    """Cancel this node's unfinished runs whose campaign the web service cancelled: a
    queued one never starts, a sending one stops and its waiting rows are pulled back
    (rows the web deleted are simply not there). Returns the runs cancelled."""
    cancelled = 0
    for run_id in await ctx.book.cancelled_by_web(ACTIVE):
        try:
            await control(ctx, run_id, "cancel", WEB_CANCEL_REASON)
        except (KeyError, DependencyDown):
            continue
        cancelled += 1
    return cancelled


def drain(ctx: Context, number: int, on: bool) -> dict[str, Any]:
    """Take an agent out of service for maintenance (or back); KeyError for an unknown one."""
    ctx.config.agent(number)
    if on:
        ctx.drained.add(number)
    else:
        ctx.drained.discard(number)
    ctx.wake.set()
    return {"agent": number, "drained": on}
