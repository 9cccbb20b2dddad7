"""The dispatcher as a supervised component: its main loop and its background loops.

Each pass of the main loop reads the node's runs and, per run: holds an advertising run
outside 08:00-21:00 KST, keeps a sending run's handoff task alive, releases a drained
run's group, resumes a held run in the morning; then grants free groups to waiting runs
and forgets the runs no longer active. It wakes on ``NOTIFY hanjullo_runs``, at the
advertising window's edges, and every `dispatch.poll_interval_s`. Background loops renew
leases, sync results, fail agents over and prune the commit ledger. The decisions live in
the sibling modules; this module only composes them, and builds the real backends
(`backends.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import structlog

from daemon.agents import AgentMonitor
from daemon.dispatcher import controls, failover, grants, handoff, results, view, writer
from daemon.dispatcher.backends import MySQLAgentTables, MySQLWriterLock, PostgresRunBook
from daemon.dispatcher.context import ERRORS, Context
from daemon.role import WriterState
from daemon.runtime import Runtime
from daemon.stores import PostgresKeeper, RedisKeeper
from daemon.supervisor import DependencyDown, Health
from dispatch.guards import in_ad_window, next_ad_window_edge
from dispatch.leases import GroupLeases
from dispatch.store.intake import NOTIFY_CHANNEL
from dispatch.store.runs import ACTIVE, HOLDS_GROUP, Run, RunStatus

log = structlog.get_logger("dispatcher")

# Every run the main loop looks at. Cancelled runs too: their rows in flight still
# bring results.
WATCHED = (*ACTIVE, RunStatus.CANCELLED)
# A status request waits this long for the runs before showing the last view.
REFRESH_TIMEOUT_S = 2.0
# How often the ledger is pruned of runs settled for good: the horizon is hours (48 by
# default), so an hour's lag keeps the ledger to the active and recent runs.
LEDGER_PRUNE_S = 3600.0


class Dispatcher:
    name = "dispatcher"

    def __init__(
        self,
        runtime: Runtime,
        postgres: PostgresKeeper,
        redis: RedisKeeper,
        agents: AgentMonitor,
        role: WriterState | None = None,
    ) -> None:
        self.runtime = runtime
        self.postgres = postgres
        self.redis = redis
        self.tables = MySQLAgentTables(runtime)
        self.writer_lock = MySQLWriterLock(runtime)
        # The node's writer role, shared with the components that wait for it.
        self.writer = role if role is not None else WriterState()
        self.ctx = Context(
            runtime,
            book=PostgresRunBook(postgres.require, lambda: runtime.config.node.id),
            tables=self.tables,
            leases=self._leases(redis),
            agents=agents,
        )
        self.ctx.is_writer = lambda: self.tables.fence is not None
        self.view = view.StatusView()

    def _leases(self, redis: RedisKeeper) -> GroupLeases:
        config = self.runtime.config
        return GroupLeases(redis.client, config.node.id, config.dispatch.lease_ttl_s)

    # ---- what the node and the status API use --------------------------------------------
    @property
    def holders(self) -> dict[str, dict[str, Any]]:
        return self.view.holders

    @property
    def status_runs(self) -> list[dict[str, Any]]:
        return self.view.runs

    @property
    def handoff_failures(self) -> int:
        return self.ctx.handoff_failures

    @property
    def writer_status(self) -> dict[str, Any]:
        return self.writer.as_json()

    async def control(
        self, run_id: uuid.UUID, action: str, reason: str | None = None
    ) -> dict[str, Any]:
        return await controls.control(self.ctx, run_id, action, reason)

    def drain(self, number: int, on: bool) -> dict[str, Any]:
        return controls.drain(self.ctx, number, on)

    async def sync_once(self) -> int:
        return await results.sync_once(self.ctx)

    async def refresh(self) -> None:
        """Re-read the runs for the status view (one query); keep the last view on failure."""
        with contextlib.suppress(*ERRORS, DependencyDown):
            runs = await asyncio.wait_for(self.ctx.book.runs_in(WATCHED), REFRESH_TIMEOUT_S)
            self.view.update(runs, view.holding(runs), self.ctx.registry)

    # ---- the component ---------------------------------------------------------------------
    async def run(self, health: Health) -> None:
        await self.postgres.wait_ready()
        self.redis.require()
        ctx = self.ctx
        ctx.leases = self._leases(self.redis)  # the TTL as configured now
        await self.tables.open()
        background: list[asyncio.Task[None]] = []
        try:
            # Passive until this daemon is the node's only writer; nothing before this
            # writes an agent row, and READY=1 does not wait for it.
            self.tables.fence = await writer.become_writer(
                self.writer_lock, ctx.node_id, self.writer, health, asyncio.sleep
            )
            async with self.postgres.listening(NOTIFY_CHANNEL, self._notified):
                background.append(
                    asyncio.create_task(
                        writer.keep_writer(self.writer_lock, ctx.node_id, asyncio.sleep),
                        name="writer-lock",
                    )
                )
                await controls.finish_pulls(ctx)
                await controls.pull_back_stopped(ctx, await ctx.book.runs_in(WATCHED))
                await grants.restore(ctx)
                background += [
                    self._every("lease-renewal", self._renew_s, grants.renew_leases),
                    asyncio.create_task(self._sync_loop(), name="result-sync"),
                    self._every("agent-failover", self._check_s, self._failover),
                    self._every("ledger-prune", lambda: LEDGER_PRUNE_S, self._prune_ledger),
                ]
                health.running()
                while True:
                    for task in background:
                        if task.done() and task.exception() is not None:
                            raise task.exception()  # type: ignore[misc]
                    # Cleared before the pass: a NOTIFY, a control or a group released
                    # while it runs wakes the next pass at once, not a poll interval later.
                    ctx.wake.clear()
                    try:
                        await self.tick()
                        health.running()
                    except ERRORS as exc:
                        health.degraded(f"{type(exc).__name__}: {exc}")
                    # Wake at 08:00 and 21:00 KST sharp, not up to a poll interval later.
                    now = ctx.now()
                    until_edge = (next_ad_window_edge(now) - now).total_seconds()
                    # A timeout block, not wait_for: on 3.11 a wait_for whose wake lands
                    # with a cancel drops the cancel, and the component would not stop.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(
                            min(ctx.settings.poll_interval_s, until_edge + 0.001)
                        ):
                            await ctx.wake.wait()
        finally:
            self.writer.suspended()
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await handoff.stop_all(ctx)
            self.tables.fence = None
            await self.tables.close()
            await self.writer_lock.release()

    def _notified(self, *_: object) -> None:
        self.ctx.wake.set()

    def _renew_s(self) -> float:
        return self.runtime.config.dispatch.lease_renew_s

    def _check_s(self) -> float:
        return self.runtime.config.supervision.check_interval_s

    def _every(
        self,
        name: str,
        interval: Callable[[], float],
        work: Callable[[Context], Awaitable[object]],
    ) -> asyncio.Task[None]:
        async def loop() -> None:
            while True:
                await asyncio.sleep(interval())
                await work(self.ctx)

        return asyncio.create_task(loop(), name=name)

    @staticmethod
    async def _failover(ctx: Context) -> None:
        # Retried at the next check; the agent monitor reports the outage itself.
        with contextlib.suppress(*ERRORS, DependencyDown):
            await failover.failover_once(ctx)

    @staticmethod
    async def _prune_ledger(ctx: Context) -> None:
        try:
            await results.prune_ledger(ctx)
        except (*ERRORS, DependencyDown) as exc:  # retried at the next interval
            log.warning("ledger prune failed", error=f"{type(exc).__name__}: {exc}")

    async def _sync_loop(self) -> None:
        failing = ""
        while True:
            await asyncio.sleep(self.runtime.config.dispatch.result_sync_interval_s)
            try:
                await results.sync_once(self.ctx)
            except (*ERRORS, DependencyDown) as exc:
                # Retried every interval; said once per distinct error, not every cycle.
                if str(exc) != failing:
                    log.warning(
                        "result sync failed; retrying", error=f"{type(exc).__name__}: {exc}"
                    )
                failing = str(exc)
            else:
                if failing:
                    log.info("result sync recovered")
                failing = ""

    async def tick(self) -> None:
        """One pass of the main loop."""
        ctx = self.ctx
        await controls.finish_pulls(ctx)
        await controls.cancel_what_the_web_cancelled(ctx)
        runs = await ctx.book.runs_in(WATCHED)
        now = ctx.now()
        held: dict[str, Run] = {}
        for run in runs:
            # Each run on its own: one run's failed control (a lock wait, an outage, a
            # deadlock) is logged and retried on the next tick, never the others' end.
            try:
                await self._tick_run(run, now, held)
            except (*ERRORS, DependencyDown) as exc:
                log.warning(
                    "run control failed; retried next tick",
                    run=str(run.id),
                    error=f"{type(exc).__name__}: {exc}",
                )
        queued = [r for r in runs if r.status == RunStatus.QUEUED]
        for state in await grants.grant(ctx, queued, held, now):
            handoff.supervise(ctx, state)
        ctx.registry.prune({r.id for r in runs if still_active(r)})
        self.view.update(runs, held, ctx.registry)

    async def _tick_run(self, run: Run, now: datetime, held: dict[str, Run]) -> None:
        """One run's part of a tick: drift, the ad window, its handoff, a stop unfinished."""
        ctx = self.ctx
        if run.status in HOLDS_GROUP and run.line_group and not ctx.has_group(run.line_group):
            # The configuration no longer has the run's group: pause this run (its
            # waiting rows pulled back from the tables the ledger names), not all.
            reason = f"line group {run.line_group!r} is no longer configured"
            log.error("run paused: configuration drift", run=str(run.id), reason=reason)
            await controls.control(ctx, run.id, "pause", reason)
            return
        if run.status in HOLDS_GROUP and run.line_group:
            held[run.line_group] = run
            state = ctx.registry.state(run.id, run.company_id)
            state.group = run.line_group
            if run.is_ad and not in_ad_window(now):
                await controls.control(ctx, run.id, "hold")
                return
            if run.status == RunStatus.SENDING:
                handoff.supervise(ctx, state)
            else:
                await grants.release_if_drained(ctx, run)
        elif run.status == RunStatus.HELD and in_ad_window(now):
            await ctx.set_status(run.id, RunStatus.QUEUED, None)
        elif run.status in controls.STOPS.values():
            # A stop whose pull-back failed (its status was written first) still has rows
            # an agent would send: a plain count, and the pull-back where any remain.
            await controls.pull_back_stopped(ctx, [run])


def still_active(run: Run) -> bool:
    """Whether a run's in-memory state is still needed: any active run, and a cancelled
    one while rows it handed to agents may still bring results."""
    return run.status != RunStatus.CANCELLED or run.awaiting_results
