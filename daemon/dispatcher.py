"""The dispatcher: line-group grants, exactly-once handoff, failover and result sync.

PostgreSQL is the source of truth for which run holds which bulk group
(``campaign_runs.status`` in sending/draining with ``line_group``); a Redis lease
per group enforces it, with the run id as token so a restart re-takes its own
leases before anything new is granted. A run holds its group until the agents
have picked up every one of its rows.

Handoff streams pending recipients in ``seq`` order (keyset pages, bounded
memory), spreads them over the group's healthy agents within each agent's
backlog bound, inserts them, then checkpoints in PostgreSQL. Anything between
the last checkpoint and the agent tables (a crash, a lost connection) is
reconciled by looking the numbers up in the agent tables before inserting: the
highest seq ever written ahead of its checkpoint is recorded first
(``verify_until``), so the window is known whatever the batch sizes. While one
batch is being written the next is planned (read, checked, spread, written to
its LOAD DATA files); only one batch is ever in flight past the checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import aiomysql
import asyncpg
import structlog

from config.model import LineGroupConfig
from config.names import GroupType, MessageType, normalise_phone
from daemon.agents import MYSQL_ERRORS, AgentMonitor, agent_is_down
from daemon.runtime import Runtime
from daemon.stores import PG_ERRORS, REDIS_ERRORS, PostgresKeeper, RedisKeeper
from daemon.supervisor import DependencyDown, Health
from dispatch import agent_tables, handoff
from dispatch.agent_tables import SPAM_CODES, SUCCESS_CODES
from dispatch.fairness import fair_order
from dispatch.guards import check_recipient, in_ad_window, next_ad_window_edge
from dispatch.handoff import RowValues
from dispatch.leases import GroupLeases
from dispatch.runs import ACTIVE, HOLDS_GROUP, NOTIFY_CHANNEL, RunStatus, show, source_ref

log = structlog.get_logger("dispatcher")

# Codes that say the sending itself is broken, not the recipient (circuit breaker).
SYSTEMIC_CODES = frozenset({55, 23, 2323, 9008, *range(56, 62)})
# Recipients checked per guard pass page.
PREPARE_PAGE = 5000
# Log-table rows are re-read this far behind the newest result seen (moves are not
# strictly in result order).
RESULT_SLACK = timedelta(seconds=10)
# Seconds between COUNTs of an agent table's waiting rows while a run inserts.
WAITING_RECOUNT_S = 2.0
ERRORS = (*MYSQL_ERRORS, *PG_ERRORS, *REDIS_ERRORS)
# Results per UPDATE; a burst is applied in parallel chunks on separate connections.
SYNC_CHUNK = 25_000


@dataclass(slots=True)
class RunState:
    """What the dispatcher keeps in memory per active run (all of it re-derivable)."""

    id: uuid.UUID
    company: str
    group: str | None = None
    task: asyncio.Task[None] | None = None
    lease_lost: bool = False
    watermarks: dict[str, datetime | None] | None = None
    prepared: bool = False
    prepared_upto: int = 0
    prepared_event: asyncio.Event = field(default_factory=asyncio.Event)
    prepare_task: asyncio.Task[None] | None = None
    # Waiting rows per agent table as last counted plus what this run inserted since: an
    # upper bound while agents consume (re-counted every WAITING_RECOUNT_S, or sooner
    # when it leaves no room), so a batch does not cost a COUNT over the whole backlog.
    waiting: dict[str, int] = field(default_factory=dict)
    counted_at: float = 0.0
    # The highest seq ever written ahead of its checkpoint (campaign_runs.verify_until):
    # recipients between the checkpoint and it are looked up before they are inserted.
    verify_until: int = 0


@dataclass(slots=True)
class Batch:
    """One batch of a run, planned per agent table, not yet written."""

    healthy: list[int]
    size: int  # recipients of the page, including those found already inserted
    last_seq: int
    pulled_seqs: list[int] | None  # a page of pulled-back recipients
    plan: dict[str, list[RowValues]] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # LOAD DATA files per table

    def discard(self) -> None:
        for path in self.files.values():
            with contextlib.suppress(OSError):
                os.unlink(path)
        self.files.clear()


class Dispatcher:
    name = "dispatcher"

    def __init__(
        self, runtime: Runtime, postgres: PostgresKeeper, redis: RedisKeeper, agents: AgentMonitor
    ) -> None:
        self.runtime = runtime
        self.postgres = postgres
        self.redis = redis
        self.agents = agents
        self.wake = asyncio.Event()
        self.runs: dict[uuid.UUID, RunState] = {}
        self.locks: defaultdict[uuid.UUID, asyncio.Lock] = defaultdict(asyncio.Lock)
        self.drained: set[int] = set()
        self.down: dict[int, str] = {}
        self.leases: GroupLeases | None = None
        self.mysql: aiomysql.Pool | None = None
        self.load_data = True
        self.status_runs: list[dict[str, Any]] = []
        self.holders: dict[str, dict[str, Any]] = {}

    # ---- configuration helpers ----------------------------------------------------------
    @property
    def node_id(self) -> str:
        return self.runtime.config.node.id

    def group(self, name: str) -> LineGroupConfig:
        for group in self.runtime.config.line_groups:
            if group.name == name:
                return group
        raise KeyError(name)

    def bulk_groups(self) -> list[LineGroupConfig]:
        return [g for g in self.runtime.config.line_groups if g.type == GroupType.BULK]

    def tables(self, group: str) -> list[str]:
        return [self.runtime.config.agent(n).table for n in self.group(group).agents]

    def healthy(self, group: str) -> list[int]:
        return [
            number
            for number in self.group(group).agents
            if number not in self.drained
            and number not in self.down
            and not agent_is_down(self.agents.statuses.get(number))
        ]

    # ---- component ----------------------------------------------------------------------
    async def run(self, health: Health) -> None:
        await self.postgres.wait_ready()
        client = self.redis.require()
        dispatch = self.runtime.config.dispatch
        self.leases = GroupLeases(client, self.node_id, dispatch.lease_ttl_s)
        self.mysql = await agent_tables.create_pool(
            self.runtime.config.mysql, maxsize=8, local_infile=True
        )
        background: list[asyncio.Task[None]] = []
        try:
            async with self.postgres.listening(NOTIFY_CHANNEL, self._notified):
                await self.restore()
                background += [
                    asyncio.create_task(self._renew_loop(), name="lease-renewal"),
                    asyncio.create_task(self._sync_loop(), name="result-sync"),
                    asyncio.create_task(self._failover_loop(), name="agent-failover"),
                ]
                health.running()
                while True:
                    for task in background:
                        if task.done() and task.exception() is not None:
                            raise task.exception()  # type: ignore[misc]
                    try:
                        await self.tick()
                        health.running()
                    except ERRORS as exc:
                        health.degraded(f"{type(exc).__name__}: {exc}")
                    self.wake.clear()
                    # Wake at 08:00 and 21:00 KST sharp, not up to a poll interval later.
                    now = self.runtime.clock.now()
                    until_edge = (next_ad_window_edge(now) - now).total_seconds()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            self.wake.wait(), min(dispatch.poll_interval_s, until_edge + 0.001)
                        )
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await self._stop_handoffs()
            await agent_tables.close_pool(self.mysql)
            self.mysql = None

    def _notified(self, *_: object) -> None:
        self.wake.set()

    async def _stop_handoffs(self) -> None:
        tasks = [t for s in self.runs.values() for t in (s.task, s.prepare_task) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for state in self.runs.values():
            state.task = state.prepare_task = None

    def _pg(self) -> asyncpg.Pool:
        return self.postgres.require()

    def _mysql(self) -> aiomysql.Pool:
        if self.mysql is None:
            raise DependencyDown("mysql pool not ready")
        return self.mysql

    async def _runs(self) -> list[asyncpg.Record]:
        async with self._pg().acquire() as conn:
            return await conn.fetch(
                """SELECT id, company_id, user_id, status, line_group, is_ad, scheduled_at,
                          queued_at, group_since, started_at, inserted_count, success_count,
                          fail_count, target_count, status_reason
                   FROM campaign_runs WHERE node_id = $1 AND status = ANY($2::text[])""",
                self.node_id,
                # Cancelled runs too: their rows in flight still bring results.
                [s.value for s in (*ACTIVE, RunStatus.CANCELLED)],
            )

    # ---- restore and grants -------------------------------------------------------------
    async def restore(self) -> None:
        """Re-take the leases of runs that hold a group, before granting anything new."""
        assert self.leases is not None
        for row in await self._runs():
            if row["status"] in HOLDS_GROUP and row["line_group"]:
                state = self._state(row)
                state.group = row["line_group"]
                if not await self.leases.acquire(row["line_group"], str(row["id"])):
                    log.error(
                        "lease of a restored run is held by someone else",
                        run=str(row["id"]),
                        group=row["line_group"],
                    )
                    state.lease_lost = True
                else:
                    log.info("lease restored", run=str(row["id"]), group=row["line_group"])

    def _state(self, row: asyncpg.Record) -> RunState:
        state = self.runs.get(row["id"])
        if state is None:
            state = self.runs[row["id"]] = RunState(row["id"], row["company_id"])
        return state

    async def tick(self) -> None:
        rows = await self._runs()
        now = self.runtime.clock.now()
        holding: dict[str, asyncpg.Record] = {}
        for row in rows:
            state = self._state(row)
            status = RunStatus(row["status"])
            if status in HOLDS_GROUP and row["line_group"]:
                holding[row["line_group"]] = row
                state.group = row["line_group"]
                if row["is_ad"] and not in_ad_window(now):
                    await self.control(row["id"], "hold")
                    continue
                if status == RunStatus.SENDING and (state.task is None or state.task.done()):
                    state.task = asyncio.create_task(
                        self._handoff(state), name=f"handoff-{row['id']}"
                    )
                elif status == RunStatus.DRAINING:
                    await self._maybe_release(row)
            elif status == RunStatus.HELD and in_ad_window(now):
                await self._set_status(row["id"], RunStatus.QUEUED, None)
        await self._grant([r for r in rows if r["status"] == RunStatus.QUEUED], holding, now)
        self._snapshot(rows, holding)

    async def _maybe_release(self, row: asyncpg.Record) -> None:
        """A draining run keeps its group until the agents picked up all its rows."""
        group = row["line_group"]
        async with self._mysql().acquire() as conn:
            waiting = await handoff.run_waiting(conn, self.tables(group), str(row["id"]))
        if waiting:
            return
        await self._set_status(row["id"], RunStatus.RESULTS, None)
        assert self.leases is not None
        await self.leases.release(group, str(row["id"]))
        log.info("group released", run=str(row["id"]), group=group)
        self.wake.set()

    async def _assignments(self) -> dict[tuple[str, str], str]:
        async with self._pg().acquire() as conn:
            rows = await conn.fetch(
                "SELECT subject_kind, subject_id, line_group FROM line_group_assignments"
                " WHERE node_id = $1",
                self.node_id,
            )
        return {(r["subject_kind"], r["subject_id"]): r["line_group"] for r in rows}

    async def _grant(
        self, queued: list[asyncpg.Record], holding: dict[str, asyncpg.Record], now: datetime
    ) -> None:
        if not queued:
            return
        assert self.leases is not None
        ready = [r for r in queued if r["scheduled_at"] is None or r["scheduled_at"] <= now]
        if not ready:
            return
        # First in, first out, fair across companies: the company served least recently
        # goes first (a company that never got a group before everyone else), and each
        # company's own runs keep their order.
        companies = sorted({r["company_id"] for r in ready})
        async with self._pg().acquire() as conn:
            served = {
                r["company_id"]: r["last"]
                for r in await conn.fetch(
                    """SELECT company_id, max(group_since) AS last FROM campaign_runs
                       WHERE node_id = $1 AND company_id = ANY($2::text[])
                       AND group_since IS NOT NULL GROUP BY company_id""",
                    self.node_id,
                    companies,
                )
            }
        ranked = fair_order(ready, served, arrival="queued_at")
        assignments = await self._assignments()
        bulk = {g.name for g in self.bulk_groups()}
        for row in ranked:
            if row["is_ad"] and not in_ad_window(now):
                await self._set_status(
                    row["id"], RunStatus.HELD, "advertising is sent 08:00-21:00 KST only"
                )
                continue
            wanted = None
            for key in (("user", row["user_id"]), ("company", row["company_id"])):
                if key[1] and assignments.get(key) in bulk:
                    wanted = assignments[key]
                    break
            free = [g for g in sorted(bulk) if g not in holding]
            if wanted is not None:
                candidates = [wanted] if wanted in free else []
            elif self.runtime.config.dispatch.pool_free_groups:
                candidates = free
            else:
                candidates = []
            for group in candidates:
                if await self.leases.acquire(group, str(row["id"])):
                    granted = await self._take_group(row["id"], group)
                    if granted:
                        holding[group] = row
                        state = self._state(row)
                        state.group, state.lease_lost = group, False
                        log.info(
                            "group granted",
                            run=str(row["id"]),
                            group=group,
                            company=row["company_id"],
                        )
                        state.task = asyncio.create_task(
                            self._handoff(state), name=f"handoff-{row['id']}"
                        )
                    else:
                        await self.leases.release(group, str(row["id"]))
                    break

    async def _take_group(self, run_id: uuid.UUID, group: str) -> bool:
        async with self._pg().acquire() as conn:
            result = await conn.execute(
                """UPDATE campaign_runs SET status = 'sending', line_group = $2,
                       group_since = now(), started_at = coalesce(started_at, $3),
                       status_reason = NULL, updated_at = now()
                   WHERE id = $1 AND status = 'queued'""",
                run_id,
                group,
                # The node clock, like the agents': it starts the run's log-table window.
                self.runtime.clock.now(),
            )
        return result.endswith(" 1")

    async def _set_status(self, run_id: uuid.UUID, status: RunStatus, reason: str | None) -> None:
        async with self._pg().acquire() as conn:
            await conn.execute(
                """UPDATE campaign_runs SET status = $2, status_reason = $3, updated_at = now(),
                       completed_at = CASE WHEN $2 IN ('completed', 'cancelled')
                                           THEN now() ELSE completed_at END
                   WHERE id = $1""",
                run_id,
                status.value,
                reason,
            )

    # ---- handoff ------------------------------------------------------------------------
    async def _handoff(self, state: RunState) -> None:
        backoff = 0.5
        while True:
            try:
                finished = await self._handoff_pass(state)
                if finished:
                    return
                backoff = 0.5
            except asyncio.CancelledError:
                raise
            except ERRORS as exc:
                # What this batch may have written is up to verify_until: looked up next time.
                log.warning(
                    "handoff interrupted; will reconcile and continue",
                    run=str(state.id),
                    error=f"{type(exc).__name__}: {exc}",
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            except DependencyDown as exc:
                log.warning("handoff waiting for a dependency", run=str(state.id), error=str(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _handoff_pass(self, state: RunState) -> bool:
        """Insert batches until the run is fully inserted (True) or must stop (True)."""
        async with self._pg().acquire() as conn:
            run = await conn.fetchrow("SELECT * FROM campaign_runs WHERE id = $1", state.id)
        if run is None or run["status"] != RunStatus.SENDING or not run["line_group"]:
            return True
        state.prepared = run["prepared"]
        state.prepared_upto = run["prepared_upto"]
        state.verify_until = run["verify_until"]
        if not state.prepared and (state.prepare_task is None or state.prepare_task.done()):
            state.prepare_task = asyncio.create_task(
                self._prepare(run, state), name=f"prepare-{state.id}"
            )
        group = run["line_group"]
        dispatch = self.runtime.config.dispatch
        ahead: Batch | None = None  # planned while the previous batch was being written
        try:
            while True:
                if state.lease_lost:
                    log.warning("lease lost: inserting stopped", run=str(state.id), group=group)
                    return True
                if run["is_ad"] and not in_ad_window(self.runtime.clock.now()):
                    self.wake.set()
                    return True
                async with self.locks[state.id]:
                    async with self._pg().acquire() as conn:
                        current = await conn.fetchval(
                            "SELECT status FROM campaign_runs WHERE id = $1", state.id
                        )
                    if current != RunStatus.SENDING:
                        return True
                    healthy = self.healthy(group)
                    batch: Batch | int
                    if not healthy:
                        batch = -1
                    elif ahead is not None and ahead.healthy == healthy:
                        batch = ahead
                    else:
                        batch = await self._next_batch(
                            state, run, healthy, dispatch.batch_size, dispatch.backlog_bound
                        )
                    if ahead is not None and batch is not ahead:
                        ahead.discard()
                    ahead = None
                    if isinstance(batch, int):
                        inserted = batch
                    else:
                        inserted, ahead = await self._commit_and_plan(state, run, batch)
                if inserted == 0 and not state.prepared:
                    # Caught up with the guard pass: wait for it to check more recipients.
                    if state.prepare_task is not None and state.prepare_task.done():
                        state.prepare_task.result()  # re-raise a failed guard pass
                    state.prepared_event.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(state.prepared_event.wait(), 1.0)
                    continue
                if inserted == 0:
                    await self._set_status(state.id, RunStatus.DRAINING, None)
                    log.info("run fully inserted; draining", run=str(state.id), group=group)
                    self.wake.set()
                    return True
                if inserted < 0:
                    await asyncio.sleep(0.5)  # every agent full (or down): wait for room
        finally:
            if ahead is not None:
                ahead.discard()

    async def _commit_and_plan(
        self, state: RunState, run: asyncpg.Record, batch: Batch
    ) -> tuple[int, Batch | None]:
        """Write `batch` and, while the servers load it, plan the one after it.

        Only one batch is ever being written without its checkpoint, so a crash
        leaves at most one batch for the next start to look up."""
        dispatch = self.runtime.config.dispatch
        commit = asyncio.create_task(self._commit_batch(state, batch))
        ahead: Batch | None = None
        try:
            if batch.pulled_seqs is None and (
                state.prepared or batch.last_seq < state.prepared_upto
            ):
                planned = await self._next_batch(
                    state,
                    run,
                    batch.healthy,
                    dispatch.batch_size,
                    dispatch.backlog_bound,
                    after=batch.last_seq,
                )
                ahead = planned if isinstance(planned, Batch) else None
        except BaseException:
            await asyncio.gather(commit, return_exceptions=True)
            raise
        try:
            inserted = await commit
        except BaseException:
            if ahead is not None:
                ahead.discard()
            raise
        return inserted, ahead

    async def _prepare(self, run: asyncpg.Record, state: RunState) -> None:
        """The guard pass, streamed ahead of the handoff in ``seq`` order.

        Every recipient that must not be sent is marked with its reason (only such
        exceptions, and numbers that needed normalising, are written). Duplicates are
        found with a set of the numbers seen so far, so the first occurrence wins; after
        a restart the set is rebuilt from the recipients already checked. Progress is
        ``prepared_upto``; the handoff never passes it.
        """
        run_id = run["id"]
        message_type = MessageType(run["message_type"])
        last = run["prepared_upto"]
        seen: set[str] = set()
        async with self._pg().acquire() as conn:
            if last:
                rows = await conn.fetch(
                    """SELECT coalesce(phone_norm, phone) AS number FROM campaign_run_recipients
                       WHERE run_id = $1 AND seq <= $2 AND state <> 'skipped'""",
                    run_id,
                    last,
                )
                seen = {r["number"] for r in rows}
        while True:
            async with self._pg().acquire() as conn:
                page = await conn.fetch(
                    """SELECT seq, phone, message_text, subject, attachments
                       FROM campaign_run_recipients WHERE run_id = $1 AND seq > $2
                       ORDER BY seq LIMIT $3""",
                    run_id,
                    last,
                    PREPARE_PAGE,
                )
                if not page:
                    break
                opted: set[str] = set()
                if run["is_ad"]:
                    numbers = [normalise_phone(r["phone"]) for r in page]
                    rows = await conn.fetch(
                        "SELECT phone FROM unsubscribes WHERE company_id = $1"
                        " AND phone = ANY($2::text[])",
                        run["company_id"],
                        numbers,
                    )
                    opted = {r["phone"] for r in rows}
                seqs, norms, reasons = [], [], []
                counts: Counter[str] = Counter()
                for r in page:
                    digits = normalise_phone(r["phone"])
                    verdict = check_recipient(
                        r["phone"],
                        r["message_text"],
                        r["subject"],
                        r["attachments"],
                        message_type,
                        digits in opted,
                    )
                    skip = verdict.skip.value if verdict.skip else None
                    if skip is None:
                        if verdict.phone_norm in seen:
                            skip = "duplicate"
                        else:
                            seen.add(verdict.phone_norm)
                    if skip is None and verdict.phone_norm == r["phone"]:
                        continue
                    if skip is not None:
                        counts[skip] += 1
                    seqs.append(r["seq"])
                    norms.append(verdict.phone_norm)
                    reasons.append(skip)
                async with conn.transaction():
                    if seqs:
                        await conn.execute(
                            """UPDATE campaign_run_recipients r SET phone_norm = u.norm,
                                   state = CASE WHEN u.reason IS NULL THEN r.state
                                                ELSE 'skipped' END,
                                   skip_reason = u.reason
                               FROM unnest($2::int[], $3::text[], $4::text[])
                                   AS u(seq, norm, reason)
                               WHERE r.run_id = $1 AND r.seq = u.seq""",
                            run_id,
                            seqs,
                            norms,
                            reasons,
                        )
                    last = page[-1]["seq"]
                    await conn.execute(
                        """UPDATE campaign_runs SET prepared_upto = $2,
                               skipped = (SELECT coalesce(jsonb_object_agg(k, v), '{}'::jsonb)
                                          FROM (SELECT k, sum(v::int) AS v FROM (
                                                  SELECT key AS k, value AS v
                                                  FROM jsonb_each_text(skipped)
                                                  UNION ALL
                                                  SELECT key, value
                                                  FROM jsonb_each_text($3::jsonb)) a
                                                GROUP BY k) b)
                           WHERE id = $1""",
                        run_id,
                        last,
                        json.dumps(counts),
                    )
            state.prepared_upto = last
            state.prepared_event.set()
        async with self._pg().acquire() as conn:
            skipped = await conn.fetchval(
                "UPDATE campaign_runs SET prepared = true WHERE id = $1 RETURNING skipped", run_id
            )
        state.prepared = True
        state.prepared_event.set()
        log.info("run checked", run=str(run_id), skipped=skipped)

    async def _already_there(
        self, state: RunState, run: asyncpg.Record, numbers: list[str]
    ) -> set[str]:
        """Which numbers of a window are already in the group's agent or log tables."""
        group_tables = self.tables(run["line_group"])
        every = [*group_tables, *self._log_window(run, group_tables)]
        async with self._mysql().acquire() as mconn:
            return set(await handoff.present(mconn, every, str(state.id), numbers))

    def _log_window(self, run: asyncpg.Record, tables: list[str]) -> list[str]:
        """The log tables that can hold the run's rows: from the month its first row was
        handed off (``started_at``, node clock) to the node clock's now."""
        now = self.runtime.clock.now()
        return agent_tables.log_tables_between(tables, run["started_at"] or now, now)

    async def _next_batch(
        self,
        state: RunState,
        run: asyncpg.Record,
        healthy: list[int],
        batch_size: int,
        bound: int,
        after: int | None = None,
    ) -> Batch | int:
        """The next batch, planned and (with LOAD DATA) written to files; 0 when nothing
        is left, -1 when no agent has room.

        The checkpoint is the run's ``next_seq``: every recipient at or below it that is
        neither skipped nor pulled back is in an agent table. Pulled-back recipients
        (``is_pulled``) go first. After a crash or a failed batch, the next batch is
        looked up by number before inserting, and only the missing rows are inserted.
        `after`: plan the batch that follows one still being written (its last seq).
        """
        config = self.runtime.config
        tables = {n: config.agent(n).table for n in healthy}

        def room_by(waiting: dict[str, int]) -> dict[int, int]:
            return {n: max(0, bound - waiting.get(t, bound)) for n, t in tables.items()}

        room = room_by(state.waiting)
        stale = time.monotonic() - state.counted_at > WAITING_RECOUNT_S
        if after is None and (stale or sum(room.values()) < batch_size):
            async with self._mysql().acquire() as mconn:
                state.waiting = await handoff.waiting_counts(mconn, list(tables.values()))
            state.counted_at = time.monotonic()
            room = room_by(state.waiting)
        capacity = min(batch_size, sum(room.values()))
        page: list[asyncpg.Record] = []
        async with self._pg().acquire() as conn:
            if after is None:
                # Rows pulled back (pause, night hold, breaker) go first, then the next ones.
                page = await conn.fetch(
                    """SELECT seq, coalesce(phone_norm, phone) AS number, message_text,
                              subject, attachments, true AS pulled
                       FROM campaign_run_recipients WHERE run_id = $1 AND is_pulled
                       ORDER BY seq LIMIT $2""",
                    state.id,
                    max(capacity, 1),
                )
                if not page:
                    after = await conn.fetchval(
                        "SELECT next_seq FROM campaign_runs WHERE id = $1", state.id
                    )
            if not page:
                page = await conn.fetch(
                    """SELECT seq, coalesce(phone_norm, phone) AS number, message_text, subject,
                              attachments, false AS pulled
                       FROM campaign_run_recipients WHERE run_id = $1 AND state = 'pending'
                       AND seq > $2 AND ($4 OR seq <= $5) ORDER BY seq LIMIT $3""",
                    state.id,
                    after,
                    max(capacity, 1),
                    state.prepared,
                    state.prepared_upto,
                )
        if not page:
            return 0
        if capacity == 0:
            return -1
        found: set[str] = set()
        pulled = bool(page[0]["pulled"])
        # A run checkpointed before verify_until existed: its first batch is looked up.
        legacy = state.verify_until == 0 and (after or 0) > 0
        if legacy or pulled or page[0]["seq"] <= state.verify_until:
            found = await self._already_there(state, run, [r["number"] for r in page])
            if found:
                log.info(
                    "rows found in the agent tables before inserting",
                    run=str(state.id),
                    rows=len(found),
                )
        msg_type = MessageType(run["message_type"]).agent_code
        callback, run_ref, company = run["callback_number"], str(state.id), run["company_id"]
        rows: list[RowValues] = [
            (
                r["number"],
                callback,
                r["message_text"],
                msg_type,
                r["subject"],
                r["attachments"][0] if r["attachments"] else None,
                run_ref,
                company,
            )
            for r in page
            if r["number"] not in found
        ]
        # Spread evenly: the agents with the most room left take the most rows.
        batch = Batch(
            healthy=list(healthy),
            size=len(page),
            last_seq=page[-1]["seq"],
            pulled_seqs=[r["seq"] for r in page] if pulled else None,
        )
        start = 0
        for number, count in handoff.spread(room, len(rows)).items():
            if count:
                table = tables[number]
                batch.plan[table] = rows[start : start + count]
                state.waiting[table] = state.waiting.get(table, 0) + count
                if self.load_data:
                    batch.files[table] = handoff.write_tsv(batch.plan[table])
            start += count
        return batch

    async def _commit_batch(self, state: RunState, batch: Batch) -> int:
        """Write a planned batch (one statement per agent table, in parallel) and move
        the checkpoint past it. Returns its size, or -1 when the lease was lost."""
        if state.lease_lost:
            batch.discard()
            return -1
        if batch.pulled_seqs is None and batch.last_seq > state.verify_until:
            # Recorded before writing: after a crash, everything up to here is looked up.
            async with self._pg().acquire() as conn:
                await conn.execute(
                    "UPDATE campaign_runs SET verify_until = greatest(verify_until, $2)"
                    " WHERE id = $1",
                    state.id,
                    batch.last_seq,
                )
            state.verify_until = batch.last_seq

        async def write(table: str) -> None:
            async with self._mysql().acquire() as mconn:
                await self._write_rows(mconn, table, batch)

        try:
            # One connection per agent table: the server loads them in parallel.
            await asyncio.gather(*(write(table) for table in batch.plan))
            async with self._pg().acquire() as conn, conn.transaction():
                if batch.pulled_seqs is not None:
                    await conn.execute(
                        """UPDATE campaign_run_recipients SET state = 'pending',
                               is_pulled = false
                           WHERE run_id = $1 AND seq = ANY($2::int[]) AND is_pulled""",
                        state.id,
                        batch.pulled_seqs,
                    )
                else:
                    await conn.execute(
                        "UPDATE campaign_runs SET next_seq = greatest(next_seq, $2) WHERE id = $1",
                        state.id,
                        batch.last_seq,
                    )
                await conn.execute(
                    """UPDATE campaign_runs SET inserted_count = inserted_count + $2,
                           updated_at = now() WHERE id = $1""",
                    state.id,
                    batch.size,
                )
        finally:
            batch.discard()
        return batch.size

    async def _write_rows(self, conn: aiomysql.Connection, table: str, batch: Batch) -> None:
        """LOAD DATA LOCAL where the server permits it (several times faster), else
        multi-row INSERTs. Either way one statement per table and batch: all or none."""
        path = batch.files.get(table)
        if self.load_data and path is not None:
            try:
                await handoff.load_file(conn, table, path)
                return
            except handoff.LoadDataRefused as exc:
                self.load_data = False
                log.warning("LOAD DATA LOCAL refused; using multi-row INSERT", error=str(exc))
        await handoff.insert_rows(conn, table, batch.plan[table])

    # ---- operator controls --------------------------------------------------------------
    async def control(
        self, run_id: uuid.UUID, action: str, reason: str | None = None
    ) -> dict[str, Any]:
        """cancel, pause, hold (pull back unpicked rows) or resume a run."""
        async with self._pg().acquire() as conn:
            run = await conn.fetchrow("SELECT * FROM campaign_runs WHERE id = $1", run_id)
        if run is None or run["node_id"] != self.node_id:
            raise KeyError(f"no run {run_id} on this node")
        if action == "resume":
            if run["status"] not in (RunStatus.PAUSED, RunStatus.HELD):
                return {"run_id": str(run_id), "status": run["status"], "resumed": False}
            await self._set_status(run_id, RunStatus.QUEUED, None)
            self.wake.set()
            return {"run_id": str(run_id), "status": RunStatus.QUEUED.value, "resumed": True}
        target = {"cancel": RunStatus.CANCELLED, "pause": RunStatus.PAUSED, "hold": RunStatus.HELD}[
            action
        ]
        if run["status"] in (RunStatus.COMPLETED, RunStatus.CANCELLED, RunStatus.REJECTED):
            return {
                "run_id": str(run_id),
                "status": run["status"],
                "stopped": 0,
                "already_gone": run["inserted_count"],
            }
        # The run lock is held by the handoff for each batch: taking it waits for the batch
        # in flight to be inserted and checkpointed; the handoff then sees the new status
        # and stops by itself (cancelling it mid-batch would lose that checkpoint).
        async with self.locks[run_id]:
            await self._set_status(run_id, target, reason)
            pulled: list[str] = []
            if run["line_group"]:
                async with self._mysql().acquire() as mconn:
                    pulled = await handoff.pull_back(
                        mconn, self.tables(run["line_group"]), str(run_id)
                    )
            async with self._pg().acquire() as conn, conn.transaction():
                # Pulled rows are re-inserted first when the run resumes; nothing else is
                # touched, so what the agents had already taken is never sent again.
                changed = await conn.fetchval(
                    """WITH u AS (UPDATE campaign_run_recipients
                                  SET state = 'pulled', is_pulled = true
                                  WHERE run_id = $1 AND state = 'pending'
                                  AND coalesce(phone_norm, phone) = ANY($2::text[])
                                  RETURNING 1)
                       SELECT count(*) FROM u""",
                    run_id,
                    pulled,
                )
                gone = await conn.fetchval(
                    """UPDATE campaign_runs SET inserted_count = inserted_count - $2,
                           status = $3, status_reason = $4, updated_at = now(),
                           completed_at = CASE WHEN $3 = 'cancelled' THEN now()
                                               ELSE completed_at END
                       WHERE id = $1 RETURNING inserted_count""",
                    run_id,
                    changed,
                    target.value,
                    reason,
                )
            if run["line_group"] and run["status"] in HOLDS_GROUP:
                assert self.leases is not None
                await self.leases.release(run["line_group"], str(run_id))
        log.info(
            "run stopped",
            run=str(run_id),
            action=action,
            stopped=changed,
            already_gone=gone,
            reason=reason,
        )
        self.wake.set()
        return {
            "run_id": str(run_id),
            "status": target.value,
            "stopped": int(changed),
            "already_gone": int(gone),
        }

    def drain(self, number: int, on: bool) -> dict[str, Any]:
        self.runtime.config.agent(number)  # KeyError for an unknown agent
        if on:
            self.drained.add(number)
        else:
            self.drained.discard(number)
        self.wake.set()
        return {"agent": number, "drained": on}

    # ---- background loops ---------------------------------------------------------------
    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.runtime.config.dispatch.lease_renew_s)
            assert self.leases is not None
            for state in list(self.runs.values()):
                if state.group is None or state.task is None or state.task.done():
                    continue
                try:
                    if not await self.leases.renew(state.group, str(state.id)):
                        state.lease_lost = True
                        log.error("lease lost", run=str(state.id), group=state.group)
                except REDIS_ERRORS as exc:
                    # Redis is away: keep inserting only while the lease surely still runs.
                    log.warning("lease renewal failed", run=str(state.id), error=str(exc))

    async def _failover_loop(self) -> None:
        while True:
            await asyncio.sleep(self.runtime.config.supervision.check_interval_s)
            with contextlib.suppress(*ERRORS, DependencyDown):
                await self._failover_once()

    async def _failover_once(self) -> None:
        for group in self.bulk_groups():
            healthy = self.healthy(group.name)
            for number in group.agents:
                status = self.agents.statuses.get(number)
                dead = number in self.drained or agent_is_down(status)
                if not dead:
                    if number in self.down:
                        log.info("agent rejoined", agent=number)
                        del self.down[number]
                    continue
                reason = (
                    "drained"
                    if number in self.drained
                    else (status.state.value if status else "unknown")
                )
                if self.down.get(number) != reason:
                    log.warning("agent marked down", agent=number, reason=reason)
                    self.down[number] = reason
                targets = [self.runtime.config.agent(n).table for n in healthy]
                if not targets or not (status and status.backlog and status.backlog.waiting):
                    continue
                async with self._mysql().acquire() as conn:
                    moved = await handoff.move_waiting(
                        conn, self.runtime.config.agent(number).table, targets
                    )
                if moved:
                    log.warning("rows moved off a down agent", agent=number, rows=moved, to=healthy)

    async def _sync_loop(self) -> None:
        failing = ""
        while True:
            await asyncio.sleep(self.runtime.config.dispatch.result_sync_interval_s)
            try:
                await self.sync_once()
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

    async def sync_once(self) -> int:
        """One incremental result sync over every run that may still get results."""
        updated = 0
        async with self._pg().acquire() as conn:
            rows = await conn.fetch(
                """SELECT * FROM campaign_runs WHERE node_id = $1 AND line_group IS NOT NULL
                   AND status = ANY($2::text[]) AND inserted_count > success_count + fail_count
                   UNION SELECT * FROM campaign_runs WHERE node_id = $1
                   AND status = 'results'""",
                self.node_id,
                ["sending", "draining", "results", "paused", "cancelled", "held"],
            )
        for run in rows:
            updated += await self._sync_run(run)
        return updated

    async def _sync_run(self, run: asyncpg.Record) -> int:
        state = self._state(run)
        if state.watermarks is None:
            state.watermarks = {}
        group_tables = self.tables(run["line_group"])
        async with self._mysql().acquire() as mconn:
            logs = await handoff.existing_tables(mconn, self._log_window(run, group_tables))

        async def read(live: list[str], log_tables: list[str]) -> tuple[list[handoff.Result], int]:
            async with self._mysql().acquire() as mconn:
                return await handoff.read_results(
                    mconn, live, log_tables, str(run["id"]), state.watermarks or {}
                )

        # One connection per table: a large burst of results is read in parallel.
        parts = await asyncio.gather(
            *(read([t], []) for t in group_tables), *(read([], [lt]) for lt in logs)
        )
        results = [r for found, _ in parts for r in found]
        in_flight = sum(flight for _, flight in parts)
        chunks = [results[i : i + SYNC_CHUNK] for i in range(0, len(results), SYNC_CHUNK)]
        applied = await asyncio.gather(*(self._apply_results(run["id"], c) for c in chunks))
        changed = sum(applied)
        for table in logs:
            times = [r.result_at for r in results if r.table == table and r.result_at]
            if times:
                state.watermarks[table] = max(times) - RESULT_SLACK
        async with self._pg().acquire() as conn:
            fresh = await conn.fetchrow(
                """UPDATE campaign_runs SET sent_count = success_count + fail_count + $2
                   WHERE id = $1 RETURNING *""",
                run["id"],
                in_flight,
            )
        assert fresh is not None
        if changed:
            await self._training(fresh)
        await self._breaker(fresh)
        done = fresh["success_count"] + fresh["fail_count"]
        horizon = timedelta(hours=self.runtime.config.dispatch.result_horizon_h)
        if fresh["status"] == RunStatus.RESULTS and (
            done >= fresh["inserted_count"]
            or (fresh["started_at"] and self.runtime.clock.now() - fresh["started_at"] > horizon)
        ):
            reason = None if done >= fresh["inserted_count"] else "result horizon reached"
            await self._set_status(run["id"], RunStatus.COMPLETED, reason)
            log.info(
                "run completed",
                run=str(run["id"]),
                success=fresh["success_count"],
                fail=fresh["fail_count"],
            )
        return changed

    async def _apply_results(self, run_id: uuid.UUID, results: list[handoff.Result]) -> int:
        """Record one chunk of results and bump the run's counters, in one transaction."""
        async with self._pg().acquire() as conn, conn.transaction():
            changed = await conn.fetch(
                """UPDATE campaign_run_recipients r SET state = 'final',
                       status_code = u.code, mob_company = u.company, delivered_at = u.at
                   FROM unnest($2::text[], $3::int[], $4::text[], $5::timestamptz[])
                       AS u(phone, code, company, at)
                   WHERE r.run_id = $1 AND coalesce(r.phone_norm, r.phone) = u.phone
                   AND r.state = 'pending'
                   RETURNING r.status_code""",
                run_id,
                [r.dest_no for r in results],
                [r.status_code for r in results],
                [r.mob_company for r in results],
                [r.result_at for r in results],
            )
            codes = [c["status_code"] for c in changed]
            success = sum(1 for c in codes if c in SUCCESS_CODES)
            await conn.execute(
                """UPDATE campaign_runs SET success_count = success_count + $2,
                       fail_count = fail_count + $3, spam_count = spam_count + $4,
                       systemic_count = systemic_count + $5, updated_at = now()
                   WHERE id = $1""",
                run_id,
                success,
                len(codes) - success,
                sum(1 for c in codes if c in SPAM_CODES),
                sum(1 for c in codes if c in SYSTEMIC_CODES),
            )
        return len(codes)

    async def _breaker(self, run: asyncpg.Record) -> None:
        dispatch = self.runtime.config.dispatch
        results = run["success_count"] + run["fail_count"]
        if run["breaker_checked"] or results < dispatch.breaker_min_results:
            return
        async with self._pg().acquire() as conn:
            await conn.execute(
                "UPDATE campaign_runs SET breaker_checked = true WHERE id = $1", run["id"]
            )
        share = run["systemic_count"] / results
        if share > dispatch.breaker_share and run["status"] in (
            RunStatus.SENDING,
            RunStatus.DRAINING,
        ):
            async with self._pg().acquire() as conn:
                codes = await conn.fetch(
                    """SELECT status_code, count(*) AS n FROM campaign_run_recipients
                       WHERE run_id = $1 AND status_code = ANY($2::int[])
                       GROUP BY status_code ORDER BY n DESC LIMIT 3""",
                    run["id"],
                    sorted(SYSTEMIC_CODES),
                )
            top = ", ".join(f"{c['status_code']}×{c['n']}" for c in codes)
            await self.control(
                run["id"],
                "pause",
                f"circuit breaker: {share:.0%} of the first {results} results "
                f"are systemic failures ({top})",
            )

    async def _training(self, run: asyncpg.Record) -> None:
        secret = self.runtime.config.dispatch.training_secret.get_secret_value()
        async with self._pg().acquire() as conn:
            await conn.execute(
                """INSERT INTO ai_training_logs (source_ref, company_id, channel, sent_count,
                       success_count, fail_count, spam_blocked, metrics_updated_at)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, now())
                   ON CONFLICT (source_ref) DO UPDATE SET sent_count = EXCLUDED.sent_count,
                       success_count = EXCLUDED.success_count,
                       fail_count = EXCLUDED.fail_count, spam_blocked = EXCLUDED.spam_blocked,
                       metrics_updated_at = now()""",
                source_ref(secret, run["id"]),
                run["company_id"],
                run["message_type"],
                run["sent_count"],
                run["success_count"],
                run["fail_count"],
                run["spam_count"],
            )

    # ---- status -------------------------------------------------------------------------
    async def refresh(self) -> None:
        """Re-read the runs for the status view (one query); keep the last view on failure."""
        with contextlib.suppress(*ERRORS, DependencyDown):
            rows = await asyncio.wait_for(self._runs(), 2.0)
            holding = {
                r["line_group"]: r for r in rows if r["status"] in HOLDS_GROUP and r["line_group"]
            }
            self._snapshot(rows, holding)

    def _snapshot(self, rows: list[asyncpg.Record], holding: dict[str, asyncpg.Record]) -> None:
        self.holders = {
            group: {
                "company": row["company_id"],
                "run_id": str(row["id"]),
                "since": row["group_since"].isoformat() if row["group_since"] else None,
            }
            for group, row in holding.items()
        }
        self.status_runs = [
            {
                "run_id": str(r["id"]),
                "company": r["company_id"],
                "status": r["status"],
                "reason": r["status_reason"],
                "line_group": r["line_group"],
                "target": r["target_count"],
                "inserted": r["inserted_count"],
                "success": r["success_count"],
                "fail": r["fail_count"],
                "pending": max(0, r["inserted_count"] - r["success_count"] - r["fail_count"]),
                "queued_at": r["queued_at"].isoformat() if r["queued_at"] else None,
            }
            for r in sorted(rows, key=lambda r: r["queued_at"])
            if r["status"] != RunStatus.CANCELLED
        ]

    async def show(self, run_id: uuid.UUID) -> dict[str, Any] | None:
        async with self._pg().acquire() as conn:
            return await show(conn, run_id)
