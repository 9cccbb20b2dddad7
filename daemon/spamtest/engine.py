"""The spam-test engine as a supervised component: its loop, the operator's cancel and
what `daemon/node.py` calls.

Each pass runs every step even if an earlier one failed (MySQL down must not stop
receipts, which need only PostgreSQL, from settling verdicts): send what is missing,
attribute receipts, read the agent's codes, decide, queue canaries, take the web's new
tests, start queued tests. Before each pass the test phones are registered in the web's
device table when due (`web_devices.py`).
It wakes on ``NOTIFY hanjullo_spam_tests``, on each recorded receipt, when a phone is
freed, and every `spam_tests.poll_interval_s` (`IDLE_POLL_S` with no active test). The
decisions live in the sibling modules; this module only composes them and builds the
real backends (`backends.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog

from daemon.agents import MYSQL_ERRORS, AgentMonitor
from daemon.modems import ModemManager
from daemon.role import WriterState, while_writer
from daemon.runtime import Runtime
from daemon.spamtest import (
    attribution,
    canaries,
    phones,
    restore,
    sending,
    verdicts,
    view,
    web_devices,
)
from daemon.spamtest.backends import MySQLTestTables, PostgresSpamBook
from daemon.spamtest.context import SpamContext
from daemon.stores import PG_ERRORS, PostgresKeeper
from daemon.supervisor import DependencyDown, Health
from dispatch import agent_tables
from dispatch.spamtests.contract import NOTIFY_CHANNEL, TestStatus

log = structlog.get_logger("spamtests")

# What a database outage raises: the pass is retried, never a crash.
ERRORS = (*MYSQL_ERRORS, *PG_ERRORS)
# Poll interval while no test is active (queue and canaries only).
IDLE_POLL_S = 2.0

# The steps of one pass, in order.
STEPS: tuple[Callable[[SpamContext], Awaitable[None]], ...] = (
    sending.send_pending,
    attribution.attribute_receipts,
    sending.poll_agents,
    verdicts.decide_all,
    canaries.queue_canaries,
    sending.take_web_tests,
    sending.start_queued,
)


async def tick(ctx: SpamContext) -> None:
    """One pass; the first failure is raised at the end."""
    failures: list[BaseException] = []
    for step in STEPS:
        try:
            await step(ctx)
        except (*ERRORS, DependencyDown) as exc:
            failures.append(exc)
    if failures:
        raise failures[0]


async def cancel(ctx: SpamContext, lock: asyncio.Lock, test_id: uuid.UUID) -> dict[str, Any]:
    """Cancel a queued or active test: what no agent took is pulled back, its phones are
    freed. Raises KeyError for an unknown test."""
    async with lock:
        outcome = await ctx.book.cancel_test(test_id)
        if outcome is None:
            raise KeyError(f"no spam test {test_id}")
        cancelled, status = outcome
        if not cancelled:
            return {"test_id": str(test_id), "status": status, "stopped": 0}
        test = ctx.active.pop(test_id, None)
        stopped = 0
        if test is not None:
            tables = sorted({s.table for s in test.slots if s.table})
            stopped = len(await ctx.tables.pull_back(tables, str(test_id)))
            # Its phones stay busy with the other tests sharing them, if any.
            for label in sorted({s.modem for s in test.slots if s.modem is not None}):
                phones.release(ctx, label)
        log.info("spam test cancelled", test=str(test_id), stopped=stopped)
        ctx.wake.set()
        sent = sum(1 for s in test.slots if s.seqno is not None) - stopped if test else 0
        return {
            "test_id": str(test_id),
            "status": TestStatus.CANCELLED.value,
            "stopped": stopped,
            "already_sent": max(0, sent),
        }


class SpamTestEngine:
    name = "spam-tests"

    def __init__(
        self,
        runtime: Runtime,
        postgres: PostgresKeeper,
        agents: AgentMonitor,
        modems: Sequence[ModemManager],
        role: WriterState,
    ) -> None:
        self.runtime = runtime
        self.postgres = postgres
        self.role = role
        self.tables = MySQLTestTables(lambda: role.fence)
        self.ctx = SpamContext(
            runtime,
            book=PostgresSpamBook(
                postgres.require,
                lambda: runtime.config.node.id,
                lambda: runtime.config.spam_tests.web_device_error,
            ),
            tables=self.tables,
            phones={m.modem.label: m for m in modems},
            agents=agents,
        )
        self.lock = asyncio.Lock()
        for manager in modems:
            manager.receipt_listeners.append(self._on_receipt)
            manager.read_listeners.append(self.ctx.wake.set)

    def _on_receipt(self, _receipt_id: int) -> None:
        self.ctx.wake.set()

    def _notified(self, *_: object) -> None:
        self.ctx.wake.set()

    async def run(self, health: Health) -> None:
        await self.postgres.wait_ready()
        self.tables.pool = await agent_tables.create_pool(self.runtime.config.mysql, maxsize=3)
        try:
            # Only the node's writer tests: a passive daemon (another holds the node) sends
            # nothing and owns no phone; a lost role stops the loop, restored when it is back.
            await while_writer(self.role, lambda: self._serve(health), health.running)
        finally:
            await agent_tables.close_pool(self.tables.pool)
            self.tables.pool = None

    async def _serve(self, health: Health) -> None:
        ctx = self.ctx
        ctx.started = ctx.monotonic()  # the phones open from now, with the role
        web_devices.restart(ctx)
        async with self.postgres.listening(NOTIFY_CHANNEL, self._notified):
            await restore.restore(ctx)
            health.running()
            while True:
                # Cleared before the pass: a receipt recorded during it wakes the next one.
                ctx.wake.clear()
                # Due at most every DEVICE_REFRESH_S; it never raises.
                await web_devices.refresh(ctx)
                try:
                    async with self.lock:
                        await tick(ctx)
                    health.running()
                except (*ERRORS, DependencyDown) as exc:
                    health.degraded(f"{type(exc).__name__}: {exc}")
                interval = ctx.section.poll_interval_s if ctx.active else IDLE_POLL_S
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(interval):
                        await ctx.wake.wait()

    async def cancel(self, test_id: uuid.UUID) -> dict[str, Any]:
        return await cancel(self.ctx, self.lock, test_id)

    def snapshot(self) -> dict[str, Any]:
        return view.snapshot(self.ctx)
