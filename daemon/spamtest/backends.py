"""The spam-test engine's seams on the real databases: `SpamBook` on the PostgreSQL pool
with the store's statements, `TestTables` on a MySQL pool with the agent-table I/O.

Each call borrows one connection for one store function. No SQL here: the statements are
`dispatch/spamtests/store.py`, `dispatch/spamtests/devices.py`,
`dispatch/spamtests/agent_rows.py` and `dispatch/handoff.py`. A pool not ready raises
`DependencyDown`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

import aiomysql
import asyncpg

from config.model import ModemConfig
from daemon.supervisor import DependencyDown
from dispatch import handoff, ledger
from dispatch.agent_tables import transaction
from dispatch.fairness import Row
from dispatch.handoff import AgentRow
from dispatch.ledger import Fence
from dispatch.spamtests import agent_rows, devices, store
from dispatch.spamtests.contract import SpamTestSpec, TestStatus, Verdict
from dispatch.spamtests.devices import Registration
from dispatch.spamtests.store import NewResult
from dispatch.store.training import SpamBlocked


class PostgresSpamBook:
    """`SpamBook` on the PostgreSQL pool, bound to this node."""

    def __init__(
        self,
        pool: Callable[[], asyncpg.Pool],
        node_id: Callable[[], str],
        web_device_error: Callable[[], bool] = lambda: False,
    ) -> None:
        self._pool = pool
        self._node = node_id
        # Whether the web's result rows may say `device_error` (`spam_tests.web_device_error`).
        self._device_error = web_device_error

    async def tests_in(self, status: TestStatus, limit: int | None = None) -> list[Row]:
        async with self._pool().acquire() as conn:
            return await store.tests_in(conn, self._node(), status, limit)

    async def results_of(self, test_id: uuid.UUID) -> list[Row]:
        async with self._pool().acquire() as conn:
            return await store.results_of(conn, test_id)

    async def receipt_delays(self, modems: list[str], count: int) -> list[tuple[str, float]]:
        async with self._pool().acquire() as conn:
            return await store.receipt_delays(conn, self._node(), modems, count)

    async def last_canaries(self) -> list[tuple[str, str, datetime]]:
        async with self._pool().acquire() as conn:
            return await store.last_canaries(conn, self._node())

    async def last_served(self) -> dict[str | None, datetime]:
        async with self._pool().acquire() as conn:
            return await store.last_served(conn, self._node())

    async def create_tests(self, specs: Sequence[SpamTestSpec]) -> None:
        async with self._pool().acquire() as conn:
            await store.create_tests(conn, specs)

    async def start_test(
        self, test_id: uuid.UUID, results: Sequence[NewResult]
    ) -> tuple[datetime, list[int]] | None:
        async with self._pool().acquire() as conn:
            return await store.start_test(conn, test_id, results, self._device_error())

    async def record_sent(self, rows: Sequence[tuple[int, int, datetime | None]]) -> None:
        async with self._pool().acquire() as conn:
            await store.record_sent(conn, rows)

    async def record_agent_codes(self, rows: Sequence[tuple[int, int, datetime | None]]) -> None:
        async with self._pool().acquire() as conn:
            await store.record_agent_codes(conn, rows)

    async def record_verdicts(self, rows: Sequence[tuple[int, Verdict, str | None]]) -> None:
        async with self._pool().acquire() as conn:
            await store.record_verdicts(conn, rows, self._device_error())

    async def complete_test(
        self, test_id: uuid.UUID, verdict: Verdict, blocked: SpamBlocked | None
    ) -> None:
        async with self._pool().acquire() as conn:
            await store.complete_test(conn, test_id, verdict, blocked)

    async def cancel_test(self, test_id: uuid.UUID) -> tuple[bool, str] | None:
        async with self._pool().acquire() as conn:
            return await store.cancel_test(conn, self._node(), test_id)

    async def unmatched_receipts(self, limit: int) -> list[Row]:
        async with self._pool().acquire() as conn:
            return await store.unmatched_receipts(conn, self._node(), limit)

    async def record_receipt(
        self,
        result_id: int,
        test_id: uuid.UUID,
        receipt_id: int,
        received_at: datetime,
        delay_s: float | None,
    ) -> None:
        async with self._pool().acquire() as conn:
            await store.record_receipt(conn, result_id, test_id, receipt_id, received_at, delay_s)

    async def record_late(
        self,
        result_id: int,
        test_id: uuid.UUID,
        receipt_id: int,
        received_at: datetime,
        delay_s: float | None,
    ) -> Verdict | None:
        async with self._pool().acquire() as conn:
            return await store.record_late(
                conn, result_id, test_id, receipt_id, received_at, delay_s
            )

    async def take_web_tests(self, limit: int, window_s: float) -> tuple[int, list[str]]:
        async with self._pool().acquire() as conn:
            return await store.take_web_tests(conn, self._node(), limit, window_s)

    async def mark_receipt(self, receipt_id: int, how: str, test_id: uuid.UUID | None) -> None:
        async with self._pool().acquire() as conn:
            await store.mark_receipt(conn, receipt_id, how, test_id)

    async def decided_unreceived(
        self, modem: str, horizon: timedelta, received_at: datetime
    ) -> list[Row]:
        async with self._pool().acquire() as conn:
            return await store.decided_unreceived(conn, self._node(), modem, horizon, received_at)

    async def register_devices(self, phones: Sequence[ModemConfig]) -> Registration:
        async with self._pool().acquire() as conn:
            return await devices.register(conn, self._node(), phones)


class MySQLTestTables:
    """`TestTables` on the engine's MySQL pool (set while the engine runs). Its inserts
    and pull-backs are fenced by the node's writer epoch, like the dispatcher's
    (`dispatch/ledger.py`): a daemon that lost the role writes no test row."""

    def __init__(self, fence: Callable[[], Fence | None]) -> None:
        self.pool: aiomysql.Pool | None = None
        self.fence = fence

    def _my(self) -> aiomysql.Pool:
        if self.pool is None:
            raise DependencyDown("mysql pool not ready")
        return self.pool

    async def existing(self, tables: Sequence[str]) -> list[str]:
        async with self._my().acquire() as conn:
            return await handoff.existing_tables(conn, tables)

    async def find_row(
        self, tables: Sequence[str], test_ref: str, phone: str, msg_type: str
    ) -> int | None:
        async with self._my().acquire() as conn:
            return await agent_rows.find_row(conn, tables, test_ref, phone, msg_type)

    async def insert(self, rows: Sequence[tuple[str, AgentRow]]) -> list[int]:
        """Every row in one MySQL transaction: all of them are written or none."""
        try:
            async with self._my().acquire() as conn, transaction(conn) as cur:
                await ledger.check_fence(cur, self.fence())
                return [await handoff.insert_row(cur, table, row) for table, row in rows]
        except (ledger.Fenced, ledger.NotWriter) as exc:
            raise DependencyDown(str(exc)) from exc

    async def final_codes(
        self, table: str, logs: Sequence[str], seqnos: Sequence[int], test_refs: Sequence[str]
    ) -> list[tuple[int, int]]:
        async with self._my().acquire() as conn:
            return await agent_rows.final_codes(conn, table, logs, seqnos, test_refs)

    async def pull_back(self, tables: Sequence[str], test_ref: str) -> list[str]:
        try:
            async with self._my().acquire() as conn:
                return await handoff.pull_back(conn, self.fence(), tables, test_ref)
        except (ledger.Fenced, ledger.NotWriter) as exc:
            raise DependencyDown(str(exc)) from exc
