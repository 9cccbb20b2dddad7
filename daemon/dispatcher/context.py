"""What every part of the dispatcher shares: its seams, the per-run registry, the
operator's drains, the agents marked down, and the configuration looked up by name.

Built once by the component (`component.py`) on the real backends, and by the unit tests
on fakes. Holds no connection of its own and runs no task.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping, Sized
from dataclasses import dataclass, field
from datetime import datetime

from config.model import DispatchSection, LineGroupConfig, NodeConfig
from config.names import GroupType
from daemon.agents import MYSQL_ERRORS, AgentStatus, agent_is_down
from daemon.dispatcher.ports import AgentTables, AgentWatch, Leases, RunBook
from daemon.dispatcher.state import RunRegistry
from daemon.metrics import NodeMetrics
from daemon.runtime import Runtime
from daemon.stores import PG_ERRORS, REDIS_ERRORS
from dispatch import agent_tables
from dispatch.handoff import RunRowKey
from dispatch.store.runs import Run, RunStatus

# What a database or Redis outage raises: retried, never a crash.
ERRORS = (*MYSQL_ERRORS, *PG_ERRORS, *REDIS_ERRORS)


def row_key(run: Run) -> RunRowKey:
    """How the run's agent rows are found: ``app_etc1`` its campaign (the web's key),
    ``bill_id`` the run itself."""
    return RunRowKey.of(run.id, run.campaign_id)


def healthy_agents(
    agents: Collection[int],
    statuses: Mapping[int, AgentStatus],
    drained: Collection[int],
    down: Collection[int],
) -> list[int]:
    """The agents of a group that may get new rows: not drained by the operator, not
    marked down by failover, and not down by the agent monitor's rule."""
    return [
        number
        for number in agents
        if number not in drained and number not in down and not agent_is_down(statuses.get(number))
    ]


@dataclass(slots=True)
class Context:
    runtime: Runtime
    book: RunBook
    tables: AgentTables
    leases: Leases
    agents: AgentWatch
    registry: RunRegistry = field(default_factory=RunRegistry)
    drained: set[int] = field(default_factory=set)
    # Agents failover took out of service, with the reason (drained, unreachable, stalled).
    down: dict[int, str] = field(default_factory=dict)
    # Set to run the main loop's next pass now rather than at its next poll.
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    monotonic: Callable[[], float] = time.monotonic
    # How the handoff waits between retries and for room (a test records instead).
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    # Handoff tasks that failed (logged each time; see handoff.supervise).
    handoff_failures: int = 0
    # Whether this daemon holds the node's writer role (writer.py); a passive one changes
    # no run.
    is_writer: Callable[[], bool] = lambda: True

    @property
    def config(self) -> NodeConfig:
        return self.runtime.config

    @property
    def settings(self) -> DispatchSection:
        return self.runtime.config.dispatch

    @property
    def node_id(self) -> str:
        return self.runtime.config.node.id

    def now(self) -> datetime:
        """The node clock (docs/clock.md)."""
        return self.runtime.clock.now()

    @property
    def metrics(self) -> NodeMetrics:
        return self.runtime.metrics

    def count_batch(self, rows: Mapping[str, Sized], seconds: float) -> None:
        """A handoff batch written: its rows per agent (and group), and how long it took."""
        groups: set[str] = set()
        for table, written in rows.items():
            agent = self.agent_number(table)
            group = self.config.group_of(agent) if isinstance(agent, int) else None
            name = group.name if group is not None else "-"
            groups.add(name)
            self.metrics.rows_handed.labels(name, str(agent)).inc(len(written))
        for name in groups:
            self.metrics.handoff_batch.labels(name).observe(seconds)

    async def set_status(self, run_id: uuid.UUID, status: RunStatus, reason: str | None) -> None:
        """Every status the engine sets passes here, so each one is counted."""
        await self.book.set_status(run_id, status, reason)
        self.metrics.run_status_changes.labels(status.value).inc()

    def has_group(self, name: str) -> bool:
        return any(group.name == name for group in self.config.line_groups)

    def group(self, name: str) -> LineGroupConfig:
        for group in self.config.line_groups:
            if group.name == name:
                return group
        raise KeyError(name)

    def bulk_groups(self) -> list[LineGroupConfig]:
        return [g for g in self.config.line_groups if g.type == GroupType.BULK]

    def agent_table(self, number: int) -> str:
        return self.config.agent(number).table

    def agent_number(self, table: str) -> int | str:
        """The agent whose table this is (the table's name if none is configured)."""
        for agent in self.config.agents:
            if agent.table == table:
                return agent.number
        return table

    def tables_of(self, group: str) -> list[str]:
        return [self.agent_table(n) for n in self.group(group).agents]

    def healthy(self, group: str) -> list[int]:
        return healthy_agents(
            self.group(group).agents, self.agents.statuses, self.drained, self.down
        )

    def log_window(self, run: Run, tables: list[str]) -> list[str]:
        """The log tables that can hold the run's rows: from the month its first row was
        handed off (``started_at``, node clock) to the node clock's now."""
        now = self.now()
        return agent_tables.log_tables_between(tables, run.started_at or now, now)
