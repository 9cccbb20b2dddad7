"""The dispatcher's seams on the real databases: `RunBook` on the PostgreSQL pool with the
store's statements, `AgentTables` on a MySQL pool with the agent-table I/O.

Each call borrows one connection for one store function, so parallel calls run on
parallel connections. No SQL here: the statements are `dispatch/store/` and
`dispatch/handoff.py`. An unreachable store raises `DependencyDown`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Concatenate, ParamSpec, TypeVar

import aiomysql
import asyncpg
import structlog

from daemon.runtime import Runtime
from daemon.supervisor import DependencyDown
from dispatch import agent_tables, handoff, infile, ledger
from dispatch.guards import CheckedPage, Fields
from dispatch.handoff import RowValues, RunRowKey, StagedRows
from dispatch.ledger import Fence, Holder, PullEntry
from dispatch.outcomes import Result
from dispatch.store import progress, results, runs, training, web
from dispatch.store.runs import Conn, Run, RunStatus
from dispatch.store.training import RunMetrics
from dispatch.store.web import WebGroup

log = structlog.get_logger("dispatcher")

P = ParamSpec("P")
T = TypeVar("T")
# MySQL connections of the dispatcher: one per agent table of a batch written in
# parallel, plus the result sync's parallel reads.
MYSQL_POOL_SIZE = 8


class PostgresRunBook:
    """`ports.RunBook` on the node's PostgreSQL pool."""

    def __init__(self, pool: Callable[[], asyncpg.Pool], node_id: Callable[[], str]) -> None:
        self._pool = pool
        self._node_id = node_id

    async def _on(
        self,
        statement: Callable[Concatenate[Conn, P], Awaitable[T]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        async with self._pool().acquire() as conn:
            return await statement(conn, *args, **kwargs)

    async def _mirrored(self, run_id: uuid.UUID, work: Callable[[Conn], Awaitable[T]]) -> T:
        """`work` changes a run's status or counters; then the web's rows of the run are
        brought in line (`dispatch/store/web.py:mirror`) on the same connection."""
        async with self._pool().acquire() as conn:
            result = await work(conn)
            await web.mirror(conn, run_id)
            return result

    async def runs_in(self, statuses: tuple[RunStatus, ...]) -> list[Run]:
        return await self._on(runs.runs_in, self._node_id(), statuses)

    async def run(self, run_id: uuid.UUID) -> Run | None:
        return await self._on(runs.fetch_run, run_id)

    async def status_of(self, run_id: uuid.UUID) -> RunStatus | None:
        return await self._on(runs.status_of, run_id)

    async def set_status(self, run_id: uuid.UUID, status: RunStatus, reason: str | None) -> None:
        await self._mirrored(run_id, lambda c: runs.set_status(c, run_id, status, reason))

    async def take_group(self, run_id: uuid.UUID, group: str, now: datetime) -> bool:
        return await self._mirrored(run_id, lambda c: runs.take_group(c, run_id, group, now))

    async def last_served(self, companies: list[str]) -> dict[str, datetime]:
        return await self._on(runs.last_served, self._node_id(), companies)

    async def assignments(self) -> dict[tuple[str, str], WebGroup]:
        return await self._on(web.assigned_groups)

    async def checked_numbers(self, run_id: uuid.UUID, upto: int) -> set[str]:
        return await self._on(progress.checked_numbers, run_id, upto)

    async def recipients_after(self, run_id: uuid.UUID, after: int, limit: int) -> Sequence[Fields]:
        return await self._on(progress.recipients_after, run_id, after, limit)

    async def opted_out(self, user_id: str | None, numbers: list[str]) -> set[str]:
        return await self._on(progress.opted_out, user_id, numbers)

    async def record_checked(self, run_id: uuid.UUID, page: CheckedPage) -> None:
        await self._on(progress.record_checked, run_id, page)

    async def finish_checking(self, run_id: uuid.UUID) -> dict[str, int]:
        return await self._on(progress.finish_checking, run_id)

    async def pulled_page(self, run_id: uuid.UUID, limit: int) -> Sequence[Fields]:
        return await self._on(progress.pulled_page, run_id, limit)

    async def checkpoint(self, run_id: uuid.UUID) -> int:
        return await self._on(progress.checkpoint, run_id)

    async def pending_page(
        self, run_id: uuid.UUID, after: int, limit: int, checked_upto: int | None
    ) -> Sequence[Fields]:
        return await self._on(progress.pending_page, run_id, after, limit, checked_upto)

    async def record_verify_until(self, run_id: uuid.UUID, seq: int) -> None:
        await self._on(progress.record_verify_until, run_id, seq)

    async def record_batch(
        self,
        run_id: uuid.UUID,
        size: int,
        last_seq: int,
        pulled_seqs: Sequence[int] | None,
        verify_until: int = 0,
    ) -> None:
        await self._mirrored(
            run_id,
            lambda c: progress.record_batch(c, run_id, size, last_seq, pulled_seqs, verify_until),
        )

    async def record_pull_back(
        self, run_id: uuid.UUID, numbers: list[str], status: RunStatus, reason: str | None
    ) -> tuple[int, int]:
        return await self._mirrored(
            run_id, lambda c: progress.record_pull_back(c, run_id, numbers, status, reason)
        )

    async def runs_awaiting_results(self, horizon_h: float) -> list[Run]:
        return await self._on(results.runs_awaiting_results, self._node_id(), horizon_h)

    async def apply_results(self, run_id: uuid.UUID, found: Sequence[Result]) -> list[int]:
        # Not mirrored here: result sync's record_in_flight, which follows every pass's
        # results, brings the web's rows in line once for the pass.
        return await self._on(results.apply_results, run_id, found)

    async def record_in_flight(self, run_id: uuid.UUID, in_flight: int) -> Run:
        return await self._mirrored(
            run_id, lambda c: results.record_in_flight(c, run_id, in_flight)
        )

    async def mark_pulled(self, run_id: uuid.UUID, numbers: list[str]) -> int:
        return await self._mirrored(run_id, lambda c: progress.mark_pulled(c, run_id, numbers))

    async def mark_breaker_checked(self, run_id: uuid.UUID) -> None:
        await self._on(results.mark_breaker_checked, run_id)

    async def commonest_codes(
        self, run_id: uuid.UUID, codes: Sequence[int]
    ) -> list[tuple[int, int]]:
        return await self._on(results.commonest_codes, run_id, codes)

    async def record_metrics(self, refs: list[str], metrics: RunMetrics, run_id: uuid.UUID) -> None:
        await self._on(training.record_metrics, refs, metrics, run_id)

    async def cancelled_by_web(self, statuses: tuple[RunStatus, ...]) -> list[uuid.UUID]:
        return await self._on(
            web.cancelled_by_web, self._node_id(), tuple(s.value for s in statuses)
        )

    async def callback_problem(self, company_id: str, callback: str) -> str | None:
        return await self._on(web.callback_problem, company_id, callback)

    async def settled_runs(self, run_ids: Sequence[uuid.UUID], horizon_h: float) -> set[uuid.UUID]:
        return await self._on(results.settled_runs, self._node_id(), run_ids, horizon_h)


class MySQLAgentTables:
    """`ports.AgentTables` on a MySQL pool of the component's own (`open`, `close`).

    Batches go in as LOAD DATA LOCAL where the server permits it (several times
    faster), else as multi-row INSERTs; either way one statement per table and batch.
    The pool answers a server's file request only for the name its own LOAD DATA
    statement used, with that batch's rows from memory (`dispatch.infile`); any other
    request drops the connection and fails the call with `InfileRefused`."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.pool: aiomysql.Pool | None = None
        self.load_data = True
        # The writer role's epoch while this daemon holds it; every write checks it.
        self.fence: Fence | None = None

    async def open(self) -> None:
        self.pool = await infile.create_pool(self.runtime.config.mysql, MYSQL_POOL_SIZE)
        async with infile.guarded(self.pool) as conn:
            await ledger.ensure_tables(conn)

    async def close(self) -> None:
        pool, self.pool = self.pool, None
        await agent_tables.close_pool(pool)

    async def _on(
        self,
        io: Callable[Concatenate[aiomysql.Connection, P], Awaitable[T]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        if self.pool is None:
            raise DependencyDown("mysql pool not ready")
        try:
            async with infile.guarded(self.pool) as conn:
                return await io(conn, *args, **kwargs)
        except (ledger.Fenced, ledger.NotWriter) as exc:
            raise DependencyDown(str(exc)) from exc

    async def waiting_counts(self, tables: Sequence[str]) -> dict[str, int]:
        return await self._on(handoff.waiting_counts, tables)

    async def run_waiting(self, tables: Sequence[str], key: RunRowKey) -> int:
        return await self._on(handoff.run_waiting, tables, key)

    async def committed(
        self,
        tables: Sequence[str],
        key: RunRowKey,
        numbers: Sequence[str],
        seqs: tuple[int, int],
    ) -> set[str]:
        return await self._on(self._committed, tables, key, numbers, seqs)

    @staticmethod
    async def _committed(
        conn: aiomysql.Connection,
        tables: Sequence[str],
        key: RunRowKey,
        numbers: Sequence[str],
        seqs: tuple[int, int],
    ) -> set[str]:
        if await ledger.has_entries(conn, key.run_ref):
            return await ledger.committed(conn, key.run_ref, numbers, seqs)
        # A run handed off before the ledger existed: search its tables as before.
        return set(await handoff.present(conn, tables, key, numbers))

    async def existing(self, tables: Sequence[str]) -> list[str]:
        return await self._on(handoff.existing_tables, tables)

    def stage(self, rows: list[RowValues]) -> StagedRows:
        return handoff.stage(rows, as_data=self.load_data)

    async def write(self, table: str, staged: StagedRows, seqs: tuple[int, int]) -> None:
        await self._on(self._write, table, staged, seqs)

    async def _write(
        self, conn: aiomysql.Connection, table: str, staged: StagedRows, seqs: tuple[int, int]
    ) -> None:
        if self.load_data and staged.data is not None:
            try:
                await handoff.write_batch(conn, self.fence, table, staged, seqs, load_data=True)
                return
            except handoff.LoadDataRefused as exc:
                self.load_data = False
                log.warning("LOAD DATA LOCAL refused; using multi-row INSERT", error=str(exc))
        await handoff.write_batch(conn, self.fence, table, staged, seqs, load_data=False)

    async def pull_back(self, tables: Sequence[str], key: RunRowKey) -> list[PullEntry]:
        return await self._on(handoff.pull_back_run, self.fence, tables, key)

    async def open_pulls(self) -> list[PullEntry]:
        return await self._on(ledger.open_pulls, self.runtime.config.node.id)

    async def close_pulls(self, entries: Sequence[PullEntry]) -> None:
        if self.fence is None:
            raise DependencyDown("this daemon does not hold the node's writer role")
        await self._on(ledger.close_pulls, self.fence, entries)

    async def tables_written(self, run_ref: str) -> list[str]:
        return await self._on(ledger.tables_written, run_ref)

    async def ledger_runs(self) -> list[str]:
        return await self._on(ledger.ledger_runs, self.runtime.config.node.id)

    async def prune_ledger(self, run_refs: Sequence[str]) -> int:
        return await self._on(ledger.prune, self.runtime.config.node.id, run_refs)

    async def move_waiting(self, source: str, targets: Sequence[str]) -> int:
        return await self._on(handoff.move_waiting, self.fence, source, targets)

    async def read_results(
        self,
        live: Sequence[str],
        logs: Sequence[str],
        key: RunRowKey,
        since: Mapping[str, datetime | None],
    ) -> tuple[list[Result], int]:
        return await self._on(handoff.read_results, live, logs, key, since)


class MySQLWriterLock:
    """`ports.WriterLock` on a MySQL connection of its own, open while the role is held
    (the server releases the named lock with the session: a killed daemon frees it)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.conn: aiomysql.Connection | None = None

    @property
    def _node(self) -> str:
        return self.runtime.config.node.id

    async def _connection(self) -> aiomysql.Connection:
        if self.conn is None or self.conn.closed:
            self.conn = await agent_tables.connect(self.runtime.config.mysql)
            await ledger.ensure_tables(self.conn)
        return self.conn

    async def take(self) -> Fence | None:
        conn = await self._connection()
        try:
            return await ledger.take_writer(conn, self._node, socket.gethostname(), os.getpid())
        except BaseException:
            await self.release()
            raise

    async def holder(self) -> Holder | None:
        return await ledger.holder(await self._connection(), self._node)

    async def still_held(self) -> bool:
        if self.conn is None or self.conn.closed:
            return False
        return await ledger.still_writer(self.conn, self._node)

    async def release(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                # Handed over at once on a clean stop; a dead session frees it anyway.
                await asyncio.wait_for(ledger.release_writer(conn, self._node), 2)
            with contextlib.suppress(Exception):
                conn.close()
