"""Agent failover: which agents are out of service, and moving their waiting rows away.

An agent is down when the operator drained it (`agent drain N`) or the agent monitor's
rule says so (`daemon.agents.agent_is_down`: its admin port refuses connections, or it
stopped consuming). A down agent's waiting rows move to the group's healthy agents in
one fenced MySQL transaction with its ledger entries (`dispatch.handoff.move_waiting`),
never while a pull-back of the same group runs (the group's lock); it rejoins when
healthy again.
The decision (`plan_failover`) is pure; `failover_once` carries it out through the
context's agent tables and keeps ``ctx.down``. Touches no PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import structlog

from daemon.agents import AgentStatus, agent_is_down
from daemon.dispatcher.context import Context, healthy_agents

log = structlog.get_logger("dispatcher")


def down_reason(number: int, status: AgentStatus | None, drained: Collection[int]) -> str | None:
    """Why an agent must get no rows ("drained", "unreachable", "stalled"), or None."""
    if number in drained:
        return "drained"
    if status is not None and agent_is_down(status):
        return status.state.value
    return None


@dataclass(slots=True)
class FailoverPlan:
    """One group's failover decision: agents newly down (or down for a new reason),
    agents back in service, and which down agents' waiting rows go to which agents."""

    marked_down: dict[int, str] = field(default_factory=dict)
    rejoined: list[int] = field(default_factory=list)
    moves: list[tuple[int, list[int]]] = field(default_factory=list)


def plan_failover(
    agents: Sequence[int],
    statuses: Mapping[int, AgentStatus],
    drained: Collection[int],
    down: Mapping[int, str],
) -> FailoverPlan:
    """What to do for one group's `agents`, given what failover marked `down` before.

    Rows only move to agents that were healthy before this decision: an agent back in
    service this moment takes new rows from the next pass on."""
    plan = FailoverPlan()
    healthy = healthy_agents(agents, statuses, drained, down)
    for number in agents:
        status = statuses.get(number)
        reason = down_reason(number, status, drained)
        if reason is None:
            if number in down:
                plan.rejoined.append(number)
            continue
        if down.get(number) != reason:
            plan.marked_down[number] = reason
        if healthy and status is not None and status.backlog and status.backlog.waiting:
            plan.moves.append((number, list(healthy)))
    return plan


async def failover_once(ctx: Context) -> int:
    """One failover pass over every bulk group; returns the rows moved."""
    moved_total = 0
    for group in ctx.bulk_groups():
        plan = plan_failover(group.agents, ctx.agents.statuses, ctx.drained, ctx.down)
        for number in plan.rejoined:
            log.info("agent rejoined", agent=number)
            del ctx.down[number]
        for number, reason in plan.marked_down.items():
            log.warning("agent marked down", agent=number, reason=reason)
            ctx.metrics.failovers.labels(str(number), reason).inc()
            ctx.down[number] = reason
        for number, targets in plan.moves:
            # Never while a pull-back of the group runs: it could miss the rows moved.
            async with ctx.registry.group_lock(group.name):
                moved = await ctx.tables.move_waiting(
                    ctx.agent_table(number), [ctx.agent_table(n) for n in targets]
                )
            ctx.metrics.failover_rows.labels(str(number)).inc(moved)
            if moved:
                log.warning("rows moved off a down agent", agent=number, rows=moved, to=targets)
            moved_total += moved
    return moved_total
