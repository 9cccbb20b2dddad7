"""The agent monitor: is each QTmsg agent alive, and what is waiting for it.

An agent is alive when its admin port accepts a TCP connection (the vendor's
admin protocol is undocumented, so a connect is all we rely on). Its backlog
comes from its MySQL table in one statement for all agents. An agent whose
oldest due row has not moved for ``supervision.stuck_after_s`` is ``stalled`` (it does
not consume); a busy agent working through a long queue is not.

An agent that is down (unreachable or stalled) and has a ``restart_command`` gets
it run (e.g. ``systemctl restart qtmsg@3``), at most once per
``supervision.restart_min_interval_s``; the outcome is in its status.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import aiomysql
import pymysql.err
import structlog

from daemon.runtime import Runtime
from daemon.supervisor import Health
from dispatch import agent_tables
from dispatch.agent_tables import Backlog

MYSQL_ERRORS = (OSError, pymysql.err.MySQLError, TimeoutError)
# Seconds a restart command may run before it is killed.
RESTART_TIMEOUT_S = 60.0

log = structlog.get_logger("agents")


class AgentState(StrEnum):
    UNKNOWN = "unknown"
    OK = "ok"
    UNREACHABLE = "unreachable"
    STALLED = "stalled"


# States in which an agent takes no work: its admin port refuses connections, or it has
# stopped consuming. UNKNOWN (not checked yet, MySQL unreadable) is not down: nothing
# is known against it.
DOWN_STATES = frozenset({AgentState.UNREACHABLE, AgentState.STALLED})


def agent_is_down(status: AgentStatus | None) -> bool:
    """The one rule for "this agent must get no new rows" (failover, grants, spam tests)."""
    return status is not None and status.state in DOWN_STATES


@dataclass(slots=True)
class RestartRecord:
    """The last restart command run for an agent, and what came of it."""

    command: str
    reason: str
    at: datetime
    count: int
    result: str = "running"

    def as_json(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "reason": self.reason,
            "at": self.at.isoformat(),
            "result": self.result,
            "count": self.count,
        }


@dataclass(frozen=True, slots=True)
class AgentStatus:
    number: int
    table: str
    group: str
    admin: str
    state: AgentState
    reachable: bool | None
    backlog: Backlog | None
    checked_at: datetime | None
    restart: RestartRecord | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "table": self.table,
            "group": self.group,
            "admin": self.admin,
            "state": self.state.value,
            "reachable": self.reachable,
            "waiting": None if self.backlog is None else self.backlog.waiting,
            "due": None if self.backlog is None else self.backlog.due,
            "oldest_waiting_s": None if self.backlog is None else self.backlog.oldest_due_s,
            "in_flight": None if self.backlog is None else self.backlog.in_flight,
            "checked_at": None if self.checked_at is None else self.checked_at.isoformat(),
            "restart": None if self.restart is None else self.restart.as_json(),
        }


async def port_accepts(host: str, port: int, timeout_s: float) -> bool:
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


class AgentMonitor:
    name = "agent-monitor"

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        config = runtime.config
        self.statuses: dict[int, AgentStatus] = {
            a.number: AgentStatus(
                a.number,
                a.table,
                group.name if (group := config.group_of(a.number)) else "",
                a.admin,
                AgentState.UNKNOWN,
                None,
                None,
                None,
            )
            for a in config.agents
        }
        self._conn: aiomysql.Connection | None = None
        # Per agent: the oldest due row's seqno and when it was first seen there. An agent
        # that consumes moves that row on; one that does not leaves it in place.
        self._head: dict[int, tuple[int, float]] = {}
        # Per agent: the last restart command run (monotonic start, and what it did).
        self._restarted_at: dict[int, float] = {}
        self.restarts: dict[int, RestartRecord] = {}
        self._restart_tasks: set[asyncio.Task[None]] = set()

    async def run(self, health: Health) -> None:
        try:
            while True:
                await self.check_once(health)
                await asyncio.sleep(self.runtime.config.supervision.check_interval_s)
        finally:
            self._close()
            for task in self._restart_tasks:
                task.cancel()
            await asyncio.gather(*self._restart_tasks, return_exceptions=True)

    async def check_once(self, health: Health) -> None:
        config = self.runtime.config
        timeout = config.supervision.connect_timeout_s
        reach = await asyncio.gather(
            *(port_accepts(a.admin_host, a.admin_port, timeout) for a in config.agents)
        )
        backlogs: dict[int, Backlog] = {}
        mysql_error = ""
        try:
            if self._conn is None:
                self._conn = await agent_tables.connect(config.mysql)
            async with asyncio.timeout(config.mysql.connect_timeout_s * 2):
                backlogs = await agent_tables.read_backlogs(
                    self._conn, {a.number: a.table for a in config.agents}
                )
        except MYSQL_ERRORS as exc:
            mysql_error = f"mysql unreachable: {type(exc).__name__}: {exc}"
            self._close()
        now = datetime.now(UTC)
        for agent, reachable in zip(config.agents, reach, strict=True):
            backlog = backlogs.get(agent.number)
            if not reachable:
                state = AgentState.UNREACHABLE
            elif backlog is not None and self._not_consuming(agent.number, backlog):
                state = AgentState.STALLED
            elif backlog is None:
                state = AgentState.UNKNOWN
            else:
                state = AgentState.OK
            old = self.statuses[agent.number]
            if state in DOWN_STATES and agent.restart_command:
                self._maybe_restart(agent.number, agent.restart_command, state)
            self.statuses[agent.number] = AgentStatus(
                agent.number,
                agent.table,
                old.group,
                agent.admin,
                state,
                reachable,
                backlog,
                now,
                self.restarts.get(agent.number),
            )
        if mysql_error:
            health.degraded(mysql_error)
            return
        down = [str(s.number) for s in self.statuses.values() if s.state != AgentState.OK]
        health.running(f"agents not ok: {', '.join(down)}" if down else "")

    def _maybe_restart(self, number: int, command: str, state: AgentState) -> None:
        interval = self.runtime.config.supervision.restart_min_interval_s
        last = self._restarted_at.get(number)
        if last is not None and time.monotonic() - last < interval:
            return
        self._restarted_at[number] = time.monotonic()
        task = asyncio.create_task(self._restart(number, command, state), name=f"restart-{number}")
        self._restart_tasks.add(task)
        task.add_done_callback(self._restart_tasks.discard)

    async def _restart(self, number: int, command: str, state: AgentState) -> None:
        previous = self.restarts.get(number)
        record = RestartRecord(
            command, state.value, datetime.now(UTC), (previous.count if previous else 0) + 1
        )
        self.restarts[number] = record
        log.warning("restarting agent", agent=number, reason=state.value, command=command)
        try:
            proc = await asyncio.create_subprocess_exec(
                *shlex.split(command),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
        except OSError as exc:
            record.result = f"could not run: {exc}"
            log.error("agent restart command could not run", agent=number, error=str(exc))
            return
        try:
            async with asyncio.timeout(RESTART_TIMEOUT_S):
                output, _ = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            record.result = f"killed after {RESTART_TIMEOUT_S:.0f}s"
            log.error("agent restart command timed out", agent=number)
            return
        tail = output.decode(errors="replace").strip().splitlines()[-1:] or [""]
        record.result = f"exit {proc.returncode}" + (f": {tail[0][:200]}" if tail[0] else "")
        (log.info if proc.returncode == 0 else log.error)(
            "agent restart command finished", agent=number, result=record.result
        )

    def _not_consuming(self, number: int, backlog: Backlog) -> bool:
        """True when the same due row has headed the queue for stuck_after_s."""
        if backlog.first_due is None:
            self._head.pop(number, None)
            return False
        now = time.monotonic()
        head = self._head.get(number)
        if head is None or head[0] != backlog.first_due:
            self._head[number] = (backlog.first_due, now)
            return False
        return now - head[1] > self.runtime.config.supervision.stuck_after_s

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
