"""A QTmsg agent: polls its MySQL table and walks each row through the documented lifecycle.

rsv1 1 (waiting) -> 2 (claimed, in one transaction with ``FOR UPDATE SKIP
LOCKED``, so two agent processes on one table never take the same row) -> 3
(handed to the relay, ``mobsend_time`` in UTC) -> 4 (result: ``status_code``,
``mob_company``, ``repmsg_recvtm`` in UTC) -> 5, moved into
``SMSQ_SEND_<n>_<YYYYMM>`` after a configurable delay, insert and delete in one
transaction (a row is never in both tables, never in neither).

Rows are picked in ``seqno`` order once ``sendreq_time <= NOW()``, at a
configurable rate. The same recipient with the same text within one second is
refused (5004), remembering the last 200 messages. The admin TCP port accepts
connections while the agent runs. Failure modes (:class:`AgentFault`) switch at
runtime. MySQL outages are survived: the agent reconnects by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections import deque
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import aiomysql
import pymysql.err
import structlog

from config.clock import NodeClock
from config.model import AgentConfig, NodeConfig
from config.names import checked_table, log_table
from dispatch import agent_tables
from simulators.network import CarrierNetwork, Submission

log = structlog.get_logger("sim.agent")

MYSQL_ERRORS = (OSError, pymysql.err.MySQLError, TimeoutError)
DUPLICATE_WINDOW_S = 1.0
DUPLICATE_MEMORY = 200
# The slow mode sends at this fraction of the configured rate, with results this much later.
SLOW_FACTOR = 10.0
# Wait this long before reconnecting after MySQL went away.
RECONNECT_S = 1.0
# Deadlock and lock-wait timeout: retry the tick on the same connection.
RETRYABLE = (1213, 1205)
# Rows per statement when moving to the log table or writing results.
BATCH = 500

_MOVE_COLUMNS = (
    "seqno, dest_no, call_back, msg_contents, msg_type, title_str, msg_instm, sendreq_time,"
    " status_code, {rsv1}, mobsend_time, repmsg_recvtm, mob_company, file_name1, file_name2,"
    " file_name3, file_name4, file_name5, bill_id, app_etc1, app_etc2, sender_code,"
    " k_template_code, k_next_type, k_button_json"
)


class AgentFault(StrEnum):
    OK = "ok"
    STOP = "stop"
    HANG = "hang"
    UNBIND = "unbind"
    SLOW = "slow"


@dataclass(slots=True)
class AgentCounters:
    picked: int = 0
    results: int = 0
    moved: int = 0
    duplicates_refused: int = 0
    mysql_errors: int = 0
    lock_retries: int = 0


class SimAgent:
    def __init__(
        self, agent: AgentConfig, config: NodeConfig, network: CarrierNetwork, clock: NodeClock
    ) -> None:
        self.agent = agent
        self.config = config
        self.network = network
        self.clock = clock
        self.table = checked_table(agent.table)
        self.fault = AgentFault.OK
        self.counters = AgentCounters()
        self.mysql_ok = False
        self.last_error = ""
        self._conn: aiomysql.Connection | None = None
        self._server: asyncio.Server | None = None
        self._admin_clients: set[asyncio.Task[None]] = set()
        self._tokens = 0.0
        self._last_refill = time.monotonic()
        self._recent: deque[tuple[str, str, float]] = deque(maxlen=DUPLICATE_MEMORY)
        self._seq = itertools.count()
        # (due monotonic time, tie-breaker, kind, seqnos, code, company)
        self._due: list[tuple[float, int, str, list[int], int, str | None]] = []
        self._log_tables: set[str] = set()
        self._recovered = False

    # ---- admin port ---------------------------------------------------------------------
    async def _admin_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._admin_clients.add(task)
        try:
            writer.write(f"QTmsg agent {self.agent.number} ({self.fault.value})\r\n".encode())
            await writer.drain()
            await reader.read(1024)
        except (ConnectionError, OSError):
            pass
        finally:
            self._admin_clients.discard(task)
            writer.close()

    async def _open_port(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._admin_client,
                self.agent.admin_host,
                self.agent.admin_port,
                reuse_address=True,
            )

    async def _close_port(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            for task in list(self._admin_clients):
                task.cancel()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await server.wait_closed()

    async def set_fault(self, fault: AgentFault) -> None:
        self.fault = fault
        if fault == AgentFault.STOP:
            await self._close_port()
        else:
            await self._open_port()
        log.info("agent fault", agent=self.agent.number, fault=fault.value)

    # ---- main loop ----------------------------------------------------------------------
    async def run(self) -> None:
        await self._open_port()
        try:
            while True:
                interval = self.config.simulator.agents.poll_interval_s
                if self.fault not in (AgentFault.STOP, AgentFault.HANG) and not await self.step():
                    interval = max(interval, RECONNECT_S)
                await asyncio.sleep(interval)
        finally:
            await self._close_port()
            self._drop_conn()

    async def step(self) -> bool:
        """One tick; False when MySQL is unreachable (the connection is dropped)."""
        try:
            await self.tick()
        except pymysql.err.OperationalError as exc:
            if exc.args and exc.args[0] in RETRYABLE:
                # Another agent process won a lock; the transaction rolled back, nothing lost.
                self.counters.lock_retries += 1
                return True
            self._mysql_failed(exc)
            return False
        except MYSQL_ERRORS as exc:
            self._mysql_failed(exc)
            return False
        return True

    def _mysql_failed(self, exc: BaseException) -> None:
        if self.mysql_ok:
            log.warning("agent lost mysql", agent=self.agent.number, error=str(exc))
        self.mysql_ok = False
        self.last_error = f"{type(exc).__name__}: {exc}"
        self.counters.mysql_errors += 1
        self._drop_conn()

    def _drop_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    async def _connection(self) -> aiomysql.Connection:
        if self._conn is None:
            self._conn = await agent_tables.connect(self.config.mysql)
            async with self._conn.cursor() as cur:
                # No gap locks: the application's INSERTs never wait on (or deadlock with) a
                # claim; SKIP LOCKED still keeps two agents off the same row.
                await cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
            await self._ensure_tables(self._conn)
            if not self.mysql_ok:
                log.info("agent connected to mysql", agent=self.agent.number)
            self.mysql_ok = True
        return self._conn

    async def tick(self) -> None:
        conn = await self._connection()
        if not self._recovered:
            await self._recover(conn)
            self._recovered = True
        await self._apply_due(conn)
        if self.fault != AgentFault.UNBIND:
            await self._pick(conn)

    # ---- picking ------------------------------------------------------------------------
    def _allowance(self) -> int:
        rate = self.config.simulator.agents.rate_per_s
        if self.fault == AgentFault.SLOW:
            rate /= SLOW_FACTOR
        now = time.monotonic()
        burst = max(1.0, rate * max(self.config.simulator.agents.poll_interval_s, 0.5))
        self._tokens = min(burst, self._tokens + (now - self._last_refill) * rate)
        self._last_refill = now
        return int(self._tokens)

    async def _pick(self, conn: aiomysql.Connection) -> None:
        allowed = self._allowance()
        if allowed < 1:
            return
        async with agent_tables.transaction(conn) as cur:
            await cur.execute(
                f"SELECT seqno, dest_no, call_back, msg_contents, msg_type, title_str,"
                f" file_name1, file_name2, file_name3, file_name4, file_name5"
                f" FROM `{self.table}` FORCE INDEX (PRIMARY)"
                f" WHERE rsv1 = '1' AND sendreq_time <= NOW()"
                f" ORDER BY seqno LIMIT %s FOR UPDATE SKIP LOCKED",
                (allowed,),
            )
            rows = await cur.fetchall()
            if rows:
                await cur.execute(
                    f"UPDATE `{self.table}` SET rsv1 = '2' WHERE seqno IN "
                    f"({','.join(str(int(r[0])) for r in rows)})"
                )
        if not rows:
            return
        self._tokens -= len(rows)
        self.counters.picked += len(rows)
        await self._hand_over(conn, list(rows))

    def _is_duplicate(self, dest: str, text: str) -> bool:
        now = time.monotonic()
        duplicate = any(
            d == dest and t == text and now - at < DUPLICATE_WINDOW_S for d, t, at in self._recent
        )
        self._recent.append((dest, text, now))
        return duplicate

    async def _hand_over(self, conn: aiomysql.Connection, rows: list[Any]) -> None:
        sent: list[int] = []
        now = time.monotonic()
        slow = SLOW_FACTOR if self.fault == AgentFault.SLOW else 1.0
        for seqno, dest, callback, text, msg_type, title, *files in rows:
            if self._is_duplicate(dest, text):
                self.counters.duplicates_refused += 1
                self._schedule(now, "result", [seqno], 5004, None)
                continue
            outcome = self.network.submit(
                Submission(
                    dest,
                    callback,
                    text,
                    msg_type,
                    title,
                    tuple(f for f in files if f),
                    f"{self.table}#{seqno}",
                )
            )
            sent.append(seqno)
            self._schedule(
                now + outcome.report_delay_s * slow,
                "result",
                [seqno],
                outcome.code,
                outcome.mob_company,
            )
        if sent:
            await self._execute(
                conn,
                f"UPDATE `{self.table}` SET rsv1 = '3', mobsend_time = UTC_TIMESTAMP()"
                " WHERE seqno IN ({}) AND rsv1 = '2'",
                sent,
            )

    def _schedule(
        self, due: float, kind: str, seqnos: list[int], code: int, company: str | None
    ) -> None:
        heapq.heappush(self._due, (due, next(self._seq), kind, seqnos, code, company))

    # ---- results and moves --------------------------------------------------------------
    async def _apply_due(self, conn: aiomysql.Connection) -> None:
        now = time.monotonic()
        results: dict[tuple[int, str | None], list[int]] = {}
        moves: list[int] = []
        while self._due and self._due[0][0] <= now:
            _, _, kind, seqnos, code, company = heapq.heappop(self._due)
            if kind == "result":
                results.setdefault((code, company), []).extend(seqnos)
            else:
                moves.extend(seqnos)
        try:
            delay = self.config.simulator.agents.log_move_delay_s
            for (code, company), seqnos in results.items():
                await self._execute(
                    conn,
                    f"UPDATE `{self.table}` SET rsv1 = '4', status_code = {int(code)},"
                    " mob_company = %s, repmsg_recvtm = UTC_TIMESTAMP()"
                    " WHERE seqno IN ({}) AND rsv1 IN ('2', '3')",
                    seqnos,
                    (company,),
                )
                self.counters.results += len(seqnos)
                self._schedule(now + delay, "move", seqnos, 0, None)
            if moves:
                await self._move(conn, moves)
        except BaseException:
            # Nothing is lost: put the work back and try again after reconnecting.
            for (code, company), seqnos in results.items():
                self._schedule(now, "result", seqnos, code, company)
            if moves:
                self._schedule(now, "move", moves, 0, None)
            raise

    async def _move(self, conn: aiomysql.Connection, seqnos: list[int]) -> None:
        target = log_table(self.table, self.clock.now_kst().date())
        if target not in self._log_tables:
            await self._ensure_tables(conn)
        columns = _MOVE_COLUMNS.format(rsv1="rsv1")
        values = _MOVE_COLUMNS.format(rsv1="'5'")
        for start in range(0, len(seqnos), BATCH):
            chunk = ",".join(str(int(s)) for s in seqnos[start : start + BATCH])
            async with agent_tables.transaction(conn) as cur:
                await cur.execute(
                    f"INSERT INTO `{target}` ({columns}) SELECT {values} FROM `{self.table}`"
                    f" WHERE seqno IN ({chunk}) AND rsv1 = '4'"
                )
                await cur.execute(
                    f"DELETE FROM `{self.table}` WHERE seqno IN ({chunk}) AND rsv1 = '4'"
                )
                moved = cur.rowcount
            self.counters.moved += moved

    async def _ensure_tables(self, conn: aiomysql.Connection) -> None:
        """The live table and the log tables of this month and the next two."""
        today = self.clock.now_kst().date()
        await agent_tables.ensure_tables(conn, [self.table], today)
        self._log_tables.update(
            log_table(self.table, month) for month in agent_tables.months_ahead(today)
        )

    async def _execute(
        self,
        conn: aiomysql.Connection,
        template: str,
        seqnos: list[int],
        params: tuple[Any, ...] = (),
    ) -> None:
        for start in range(0, len(seqnos), BATCH):
            chunk = ",".join(str(int(s)) for s in seqnos[start : start + BATCH])
            async with conn.cursor() as cur:
                await cur.execute(template.format(chunk), params or None)

    async def _recover(self, conn: aiomysql.Connection) -> None:
        """After a restart, finish what the previous run of this agent left in flight."""
        async with conn.cursor() as cur:
            await cur.execute(
                f"SELECT seqno, rsv1, msg_type FROM `{self.table}` WHERE rsv1 IN ('2', '3', '4')"
            )
            rows = await cur.fetchall()
        now = time.monotonic()
        for seqno, rsv1, msg_type in rows:
            if rsv1 == "4":
                self._schedule(now, "move", [seqno], 0, None)
            else:
                # Already with the relay: its result comes back; nothing is sent twice.
                self._schedule(now, "result", [seqno], 6 if msg_type == "S" else 1000, None)
        if rows:
            log.info("agent resumed rows in flight", agent=self.agent.number, rows=len(rows))

    def status(self) -> dict[str, Any]:
        return {
            "number": self.agent.number,
            "table": self.table,
            "admin": self.agent.admin,
            "fault": self.fault.value,
            "port_open": self._server is not None,
            "mysql_ok": self.mysql_ok,
            "last_error": self.last_error,
            "scheduled": len(self._due),
            "picked": self.counters.picked,
            "results": self.counters.results,
            "moved": self.counters.moved,
            "duplicates_refused": self.counters.duplicates_refused,
            "mysql_errors": self.counters.mysql_errors,
        }
