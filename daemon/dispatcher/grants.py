"""Line-group grants: which waiting run gets which bulk group, and how long it keeps it.

PostgreSQL is the source of truth for which run holds which group (status sending or
draining with ``line_group``); a Redis lease per group enforces it, with the run id as
token, so a restart re-takes its own leases (`restore`) before anything new is granted.
Waiting runs are served first in, first out, fair across companies
(`dispatch.fairness.fair_order`). A run keeps its group until the agents picked up all
of its rows (`release_if_drained`). Starts no task: the caller starts the handoff of a
granted run. Touches the databases only through the context's seams.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

import structlog

from daemon.dispatcher.context import Context, row_key
from daemon.dispatcher.state import RunState
from daemon.stores import REDIS_ERRORS
from dispatch.fairness import fair_order
from dispatch.guards import in_ad_window, run_field_problems
from dispatch.store.runs import ACTIVE, HOLDS_GROUP, Run, RunStatus
from dispatch.store.web import WebGroup

log = structlog.get_logger("dispatcher")

NIGHT_HOLD_REASON = "advertising is sent 08:00-21:00 KST only"


def candidate_groups(
    run: Run,
    assignments: Mapping[tuple[str, str], str],
    bulk: Collection[str],
    holding: Collection[str],
    pool_free_groups: bool,
) -> list[str]:
    """The groups `run` may take now, in the order to try them: its user's bulk group,
    else its company's, when free; with no assignment, any free bulk group if the node
    pools them (`dispatch.pool_free_groups`), else none."""
    wanted = None
    for kind, subject in (("user", run.user_id), ("company", run.company_id)):
        if subject and assignments.get((kind, subject)) in bulk:
            wanted = assignments[(kind, subject)]
            break
    free = [g for g in sorted(bulk) if g not in holding]
    if wanted is not None:
        return [wanted] if wanted in free else []
    return free if pool_free_groups else []


def node_groups(
    web_groups: Mapping[tuple[str, str], WebGroup], ctx: Context
) -> tuple[dict[tuple[str, str], str], dict[tuple[str, str], WebGroup]]:
    """The web's assignments mapped to this node's configured groups by table name (a web
    group is the configured group with exactly its tables), and those that map to none."""
    by_tables = {frozenset(ctx.tables_of(g.name)): g.name for g in ctx.config.line_groups}
    mapped: dict[tuple[str, str], str] = {}
    foreign: dict[tuple[str, str], WebGroup] = {}
    for key, group in web_groups.items():
        name = by_tables.get(frozenset(group.tables))
        if name is None:
            foreign[key] = group
        else:
            mapped[key] = name
    return mapped, foreign


def foreign_group_reason(
    run: Run,
    mapped: Mapping[tuple[str, str], str],
    foreign: Mapping[tuple[str, str], WebGroup],
) -> str | None:
    """Why `run` waits: the web assigns its user (else its company) a group whose tables are
    no line group of this node. None when the assignment maps, or there is none."""
    for kind, subject in (("user", run.user_id), ("company", run.company_id)):
        if not subject:
            continue
        if (kind, subject) in mapped:
            return None
        group = foreign.get((kind, subject))
        if group is not None:
            return (
                f"the web service assigns {kind} line group {group.name!r} (tables"
                f" {', '.join(group.tables)}), which is no line group of this node; fix:"
                " configure a group of exactly those agents here, or assign another group"
            )
    return None


def ranked(waiting: list[Run], last_served: Mapping[str, datetime]) -> list[Run]:
    """`waiting` in the order to serve them: the company served least recently first (a
    company never served before everyone else), each company's own runs in arrival
    order."""
    entries: list[dict[str, Any]] = [
        {"company_id": r.company_id, "queued_at": r.queued_at, "run": r} for r in waiting
    ]
    served: dict[str | None, datetime] = dict(last_served.items())
    return [e["run"] for e in fair_order(entries, served, arrival="queued_at")]


async def restore(ctx: Context) -> None:
    """Re-take the leases of runs that hold a group, before granting anything new."""
    for run in await ctx.book.runs_in((*ACTIVE, RunStatus.CANCELLED)):
        if run.status in HOLDS_GROUP and run.line_group:
            state = ctx.registry.state(run.id, run.company_id)
            state.group = run.line_group
            if await ctx.leases.acquire(run.line_group, str(run.id)):
                state.lease_confirmed_at = ctx.monotonic()
                log.info("lease restored", run=str(run.id), group=run.line_group)
            else:
                log.error(
                    "lease of a restored run is held by someone else",
                    run=str(run.id),
                    group=run.line_group,
                )
                ctx.metrics.lease_losses.labels(run.line_group).inc()
                state.lease_lost = True


async def grant(
    ctx: Context, queued: list[Run], holding: dict[str, Run], now: datetime
) -> list[RunState]:
    """Give free bulk groups to the queued runs whose time has come, in fair order;
    returns the runs granted (their handoff is the caller's to start). `holding` (group
    → run) gains the grants."""
    ready = [r for r in queued if r.scheduled_at is None or r.scheduled_at <= now]
    if not ready:
        return []
    order = ranked(ready, await ctx.book.last_served(sorted({r.company_id for r in ready})))
    assignments, foreign = node_groups(await ctx.book.assignments(), ctx)
    bulk = {g.name for g in ctx.bulk_groups()}
    granted: list[RunState] = []
    for run in order:
        # The web service writes runs directly: a value no agent row can hold is refused
        # here, before a group is taken or a row written (the subject is per recipient and
        # checked by the guard pass).
        problems = run_field_problems(run.company_id, run.callback_number, None)
        if not problems:
            # A sender number the web would not accept for the company (the 9008 breaker
            # stays as the last line, for what the carriers refuse).
            unregistered = await ctx.book.callback_problem(run.company_id, run.callback_number)
            problems = [unregistered] if unregistered else []
        if problems:
            reason = "; ".join(problems)
            await ctx.book.set_status(run.id, RunStatus.REJECTED, reason)
            log.warning("run rejected", run=str(run.id), reason=reason)
            continue
        if run.is_ad and not in_ad_window(now):
            await ctx.set_status(run.id, RunStatus.HELD, NIGHT_HOLD_REASON)
            continue
        waiting = foreign_group_reason(run, assignments, foreign)
        if waiting is not None:
            # Never sent on some other group instead: it waits, and says why.
            if run.status_reason != waiting:
                await ctx.set_status(run.id, RunStatus.QUEUED, waiting)
                log.warning("run waits for a line group this node lacks", run=str(run.id))
            continue
        groups = candidate_groups(run, assignments, bulk, holding, ctx.settings.pool_free_groups)
        for group in groups:
            if not await ctx.leases.acquire(group, str(run.id)):
                continue
            if await ctx.book.take_group(run.id, group, ctx.now()):
                ctx.metrics.run_status_changes.labels(RunStatus.SENDING.value).inc()
                holding[group] = run
                state = ctx.registry.state(run.id, run.company_id)
                state.group, state.lease_lost = group, False
                state.lease_confirmed_at = ctx.monotonic()
                log.info("group granted", run=str(run.id), group=group, company=run.company_id)
                granted.append(state)
            else:
                await ctx.leases.release(group, str(run.id))
            break
    return granted


async def release_if_drained(ctx: Context, run: Run) -> bool:
    """A draining run keeps its group until the agents picked up all its rows; then the
    group is released and the run waits for its results."""
    assert run.line_group is not None
    if await ctx.tables.run_waiting(ctx.tables_of(run.line_group), row_key(run)):
        return False
    await ctx.set_status(run.id, RunStatus.RESULTS, None)
    await ctx.leases.release(run.line_group, str(run.id))
    log.info("group released", run=str(run.id), group=run.line_group)
    ctx.wake.set()
    return True


async def renew_leases(ctx: Context) -> None:
    """Extend the lease of every run whose handoff is running; a lease found taken marks
    the run, which stops inserting at once."""
    for state in list(ctx.registry.runs.values()):
        running = state.handoff is not None and not state.handoff.done()
        if state.group is None or not (running or state.lease_unconfirmed):
            continue
        try:
            if not await ctx.leases.renew(state.group, str(state.id)):
                state.lease_lost, state.lease_unconfirmed = True, False
                ctx.metrics.lease_losses.labels(state.group).inc()
                log.error("lease lost", run=str(state.id), group=state.group)
            else:
                state.lease_confirmed_at = ctx.monotonic()
                if state.lease_unconfirmed:
                    # Nobody took it meanwhile: the run goes on (the next pass restarts it).
                    state.lease_lost = state.lease_unconfirmed = False
                    log.info("lease confirmed again", run=str(state.id), group=state.group)
                    ctx.wake.set()
        except REDIS_ERRORS as exc:
            # Redis is away: keep inserting only while the lease surely still runs (its
            # TTL since it was last confirmed); after that it may be someone else's.
            unconfirmed = ctx.monotonic() - state.lease_confirmed_at
            if unconfirmed > ctx.settings.lease_ttl_s and not state.lease_lost:
                state.lease_lost = state.lease_unconfirmed = True
                ctx.metrics.lease_losses.labels(state.group).inc()
                log.error(
                    "lease unconfirmed for longer than its TTL: inserting stopped",
                    run=str(state.id),
                    group=state.group,
                    unconfirmed_s=round(unconfirmed, 1),
                    error=str(exc),
                )
            else:
                log.warning("lease renewal failed", run=str(state.id), error=str(exc))
