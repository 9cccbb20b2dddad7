"""Supervised components: each runs as its own task and is restarted when it fails.

A component reports its state through the :class:`Health` handed to it. An
exception is logged, the component is marked ``degraded`` with the reason, and
it is restarted after a capped, doubling backoff that resets once it has been
``running`` again. Nothing a component does can take the process down.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Protocol

import structlog

log = structlog.get_logger("supervisor")


class ComponentState(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    DEGRADED = "degraded"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class ComponentStatus:
    name: str
    state: ComponentState
    reason: str
    since: datetime

    def as_json(self) -> dict[str, str]:
        return {
            "name": self.name,
            "state": self.state.value,
            "reason": self.reason,
            "since": self.since.isoformat(),
        }


class DependencyDown(Exception):
    """A database, Redis or device the component needs is unreachable."""


class Health:
    """The state a component reports; transitions are logged once each."""

    def __init__(self, name: str, on_change: Callable[[ComponentStatus], None] | None = None):
        self.name = name
        self._on_change = on_change
        self.status = ComponentStatus(name, ComponentState.STARTING, "", datetime.now(UTC))
        self.reached_running = False

    def set(self, state: ComponentState, reason: str = "") -> None:
        if state == self.status.state and reason == self.status.reason:
            return
        self.status = ComponentStatus(self.name, state, reason, datetime.now(UTC))
        if state == ComponentState.RUNNING:
            self.reached_running = True
        level = log.warning if state == ComponentState.DEGRADED else log.info
        level("component state", component=self.name, state=state.value, reason=reason)
        if self._on_change is not None:
            self._on_change(self.status)

    def running(self, reason: str = "") -> None:
        self.set(ComponentState.RUNNING, reason)

    def degraded(self, reason: str) -> None:
        self.set(ComponentState.DEGRADED, reason)

    @property
    def state(self) -> ComponentState:
        return self.status.state


class Component(Protocol):
    name: str

    async def run(self, health: Health) -> None:
        """Do the component's work until cancelled. Raise to be restarted."""


class Supervisor:
    def __init__(
        self,
        backoff_initial_s: float,
        backoff_max_s: float,
        on_change: Callable[[ComponentStatus], None] | None = None,
    ) -> None:
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._on_change = on_change
        self._components: list[tuple[Component, Health]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        # The restart delays chosen per component, newest last (for status and tests).
        self.backoffs: dict[str, deque[float]] = {}

    def add(self, component: Component) -> Health:
        health = Health(component.name, self._on_change)
        self._components.append((component, health))
        return health

    def start(self) -> None:
        for component, health in self._components:
            task = asyncio.create_task(self._keep(component, health), name=component.name)
            self._tasks.append(task)

    def statuses(self) -> list[ComponentStatus]:
        return [health.status for _, health in self._components]

    def health(self, name: str) -> Health:
        for component, health in self._components:
            if component.name == name:
                return health
        raise KeyError(name)

    async def _keep(self, component: Component, health: Health) -> None:
        backoff = self.backoff_initial_s
        while not self._stopping.is_set():
            health.reached_running = False
            if health.state != ComponentState.DEGRADED:
                health.set(ComponentState.STARTING)
            try:
                await component.run(health)
                reason = "returned unexpectedly"
                if self._stopping.is_set():
                    break
                health.degraded(reason)
            except asyncio.CancelledError:
                raise
            except DependencyDown as exc:
                health.degraded(str(exc))
            except Exception as exc:
                log.exception("component crashed", component=component.name)
                health.degraded(f"crashed: {type(exc).__name__}: {exc}")
            if health.reached_running:
                backoff = self.backoff_initial_s
            self.backoffs.setdefault(component.name, deque(maxlen=20)).append(backoff)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(backoff):
                    await self._stopping.wait()
            backoff = min(backoff * 2, self.backoff_max_s)

    async def stop(self, timeout_s: float) -> list[str]:
        """Cancel every component and wait up to `timeout_s` for them to clean up; the
        names of those that did not stop in time."""
        self._stopping.set()
        for task in self._tasks:
            task.cancel()
        late: list[str] = []
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=timeout_s)
            for task in pending:
                log.error("component did not stop in time", component=task.get_name())
                late.append(task.get_name())
        for _, health in self._components:
            health.set(ComponentState.STOPPED)
        return late
