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

from daemon.dispatcher.context import Context
from dispatch.store.runs import FINISHED, HOLDS_GROUP, RunStatus

log = structlog.get_logger("dispatcher")

STOPS = {"cancel": RunStatus.CANCELLED, "pause": RunStatus.PAUSED, "hold": RunStatus.HELD}


async def control(
    ctx: Context, run_id: uuid.UUID, action: str, reason: str | None = None
) -> dict[str, Any]:
    """cancel, pause, hold or resume a run; KeyError for a run of another node (or none)."""
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
        pulled: list[str] = []
        if run.line_group:
            pulled = await ctx.tables.pull_back(ctx.tables_of(run.line_group), str(run_id))
        stopped, gone = await ctx.book.record_pull_back(run_id, pulled, target, reason)
        if run.line_group and run.status in HOLDS_GROUP:
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


def drain(ctx: Context, number: int, on: bool) -> dict[str, Any]:
    """Take an agent out of service for maintenance (or back); KeyError for an unknown one."""
    ctx.config.agent(number)
    if on:
        ctx.drained.add(number)
    else:
        ctx.drained.discard(number)
    ctx.wake.set()
    return {"agent": number, "drained": on}
