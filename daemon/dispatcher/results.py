"""Result sync: agents' results into PostgreSQL, the circuit breaker, training metrics,
and a run's completion.

Every `dispatch.result_sync_interval_s` each run that may still get results is read:
live rows with a result (rsv1 4) and log rows past a per-table watermark, one
connection per table so a burst is read in parallel, applied in chunks. The breaker
judges a run once, on its first `breaker_min_results` results: more than
`breaker_share` systemic failures pause it with that reason (its waiting rows are
pulled back). A run completes when every inserted row has a result, or at the result
horizon. The rules are `dispatch/outcomes.py`'s; the databases are reached only through
the context's seams.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import timedelta

import structlog

from daemon.dispatcher.context import Context, row_key
from daemon.dispatcher.controls import control, run_tables
from daemon.metrics import Outcome
from dispatch.outcomes import (
    SYSTEMIC_CODES,
    advance_watermarks,
    breaker_reason,
    breaker_share,
    completion,
)
from dispatch.runs import source_ref
from dispatch.store.runs import Run, RunStatus
from dispatch.store.training import RunMetrics

log = structlog.get_logger("dispatcher")

# Results per UPDATE; a burst is applied in parallel chunks on separate connections.
SYNC_CHUNK = 25_000


async def prune_ledger(ctx: Context) -> int:
    """Delete the ledger entries of runs settled for good (final and unchanged beyond the
    result horizon, or gone from PostgreSQL): nothing replays, syncs or resumes them again.
    A run with a pull-back whose bookkeeping is unfinished keeps its entries. Returns the
    entries deleted; the ledger so holds the active and recent runs only."""
    refs: dict[uuid.UUID, str] = {}
    for ref in await ctx.tables.ledger_runs():
        with contextlib.suppress(ValueError):  # every run_ref is a run id; skip anything else
            refs[uuid.UUID(ref)] = ref
    if not refs:
        return 0
    unfinished = {p.run_ref for p in await ctx.tables.open_pulls()}
    settled = await ctx.book.settled_runs(list(refs), ctx.settings.result_horizon_h)
    gone = sorted(refs[i] for i in settled if refs[i] not in unfinished)
    if not gone:
        return 0
    deleted = await ctx.tables.prune_ledger(gone)
    log.info("ledger pruned", runs=len(gone), entries=deleted)
    return deleted


async def sync_once(ctx: Context) -> int:
    """One incremental result sync over every run that may still get results; returns
    the recipients whose result was recorded."""
    updated = 0
    for run in await ctx.book.runs_awaiting_results(ctx.settings.result_horizon_h):
        updated += await sync_run(ctx, run)
    return updated


async def sync_run(ctx: Context, run: Run) -> int:
    assert run.line_group is not None
    state = ctx.registry.state(run.id, run.company_id)
    # Every table the run ever wrote to (another group's before a resume, a table failover
    # moved rows to, a group since removed from the configuration), by the ledger.
    group_tables = await run_tables(ctx, run)
    logs = await ctx.tables.existing(ctx.log_window(run, group_tables))
    key = row_key(run)
    parts = await asyncio.gather(
        *(ctx.tables.read_results([t], [], key, state.watermarks) for t in group_tables),
        *(ctx.tables.read_results([], [lt], key, state.watermarks) for lt in logs),
    )
    results = [r for found, _ in parts for r in found]
    in_flight = sum(flight for _, flight in parts)
    chunks = [results[i : i + SYNC_CHUNK] for i in range(0, len(results), SYNC_CHUNK)]
    codes = [
        c
        for part in await asyncio.gather(*(ctx.book.apply_results(run.id, c) for c in chunks))
        for c in part
    ]
    ctx.metrics.count_results(codes)
    changed = len(codes)
    advance_watermarks(state.watermarks, results, logs)
    fresh = await ctx.book.record_in_flight(run.id, in_flight)
    if changed:
        await record_training(ctx, fresh)
    await check_breaker(ctx, fresh)
    if fresh.status == RunStatus.RESULTS:
        horizon = timedelta(hours=ctx.settings.result_horizon_h)
        complete, reason = completion(
            fresh.results, fresh.inserted_count, fresh.started_at, ctx.now(), horizon
        )
        if complete:
            await ctx.set_status(run.id, RunStatus.COMPLETED, reason)
            missing = max(0, fresh.inserted_count - fresh.results)
            ctx.metrics.results.labels(Outcome.PENDING_TIMEOUT).inc(missing)
            log.info(
                "run completed",
                run=str(run.id),
                success=fresh.success_count,
                fail=fresh.fail_count,
            )
    return changed


async def check_breaker(ctx: Context, run: Run) -> bool:
    """Judge a run on its first results; True when it was paused."""
    settings = ctx.settings
    share = breaker_share(run.results, run.systemic_count, settings.breaker_min_results)
    if run.breaker_checked or share is None:
        return False
    await ctx.book.mark_breaker_checked(run.id)
    if share <= settings.breaker_share or run.status not in (
        RunStatus.SENDING,
        RunStatus.DRAINING,
    ):
        return False
    commonest = await ctx.book.commonest_codes(run.id, sorted(SYSTEMIC_CODES))
    await control(ctx, run.id, "pause", breaker_reason(share, run.results, commonest))
    ctx.metrics.breaker_trips.inc()
    return True


async def record_training(ctx: Context, run: Run) -> None:
    """The run's counters on its ``ai_training_logs`` row. The web's logger keys an AI
    send's row by its campaign_runs id (the run id) and a direct send's by its campaigns id
    (routes/campaigns.ts:920, 1797): the row is looked up under both, and only one exists."""
    secret = ctx.settings.training_secret.get_secret_value()
    refs = [source_ref(secret, run.id)]
    if run.campaign_id is not None:
        refs.append(source_ref(secret, run.campaign_id))
    await ctx.book.record_metrics(refs, RunMetrics.of(run), run.id)
