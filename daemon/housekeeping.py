"""Scheduled housekeeping (APScheduler): keep the agents' monthly log tables ahead.

The agents move finished rows into ``SMSQ_SEND_<n>_<YYYYMM>``; a missing table at
the turn of a month stalls them. This job makes sure the current month and the
next two exist, at start and every day shortly after midnight KST. A failed run
marks the component ``degraded`` and is retried soon.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from config.clock import KST
from daemon.agents import MYSQL_ERRORS
from daemon.runtime import Runtime
from daemon.stores import PG_ERRORS
from daemon.supervisor import DependencyDown, Health
from dispatch import agent_tables

log = structlog.get_logger("housekeeping")

# After a failed run, try again this soon rather than waiting for tomorrow.
RETRY_AFTER_S = 30.0


class Housekeeping:
    name = "scheduler"

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.last_results: dict[str, str] = {}
        self._extra_jobs: list[tuple[str, Callable[[], Awaitable[None]], dict[str, object]]] = []

    def add_job(self, name: str, job: Callable[[], Awaitable[None]], **trigger: object) -> None:
        """Register a job for a later component (e.g. pruning); `trigger` is cron fields."""
        self._extra_jobs.append((name, job, trigger))

    async def ensure_log_tables(self) -> list[str]:
        config = self.runtime.config
        today = self.runtime.clock.now_kst().date()
        conn = await agent_tables.connect(config.mysql)
        try:
            created = await agent_tables.ensure_tables(
                conn, [a.table for a in config.agents], today
            )
        finally:
            conn.close()
        if created:
            log.info("log tables created", tables=created)
        return created

    async def run(self, health: Health) -> None:
        scheduler = AsyncIOScheduler(timezone=KST)
        failures: dict[str, str] = {}

        def report() -> None:
            if failures:
                health.degraded("; ".join(f"{k}: {v}" for k, v in sorted(failures.items())))
            else:
                health.running()

        async def guarded(name: str, job: Callable[[], Awaitable[object]]) -> None:
            try:
                await job()
            except (*MYSQL_ERRORS, *PG_ERRORS, DependencyDown) as exc:
                failures[name] = f"{type(exc).__name__}: {exc}"
                self.last_results[name] = "failed"
                report()
                retry_at = datetime.now(KST) + timedelta(seconds=RETRY_AFTER_S)
                scheduler.add_job(
                    guarded,
                    "date",
                    run_date=retry_at,
                    args=[name, job],
                    id=f"{name}-retry",
                    replace_existing=True,
                )
                return
            failures.pop(name, None)
            self.last_results[name] = "ok"
            report()

        scheduler.add_job(
            guarded,
            "cron",
            hour=0,
            minute=5,
            args=["log-tables", self.ensure_log_tables],
            id="log-tables",
        )
        for name, job, trigger in self._extra_jobs:
            scheduler.add_job(guarded, "cron", args=[name, job], id=name, **trigger)
        scheduler.start()
        try:
            await guarded("log-tables", self.ensure_log_tables)
            await asyncio.Event().wait()
        finally:
            scheduler.shutdown(wait=False)
