"""Supervision: a crashing component is restarted with capped backoff; nothing escapes."""

from __future__ import annotations

import asyncio

from daemon.supervisor import ComponentState, DependencyDown, Health, Supervisor


class Flaky:
    """Fails `failures` times, then runs until cancelled."""

    name = "flaky"

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures = failures
        self.error = error
        self.attempts = 0
        self.running = asyncio.Event()
        self.stopped = asyncio.Event()

    async def run(self, health: Health) -> None:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise self.error
        health.running()
        self.running.set()
        try:
            await asyncio.Event().wait()
        finally:
            self.stopped.set()


async def test_crash_is_restarted_and_recorded() -> None:
    changes: list[tuple[str, str]] = []
    sup = Supervisor(0.001, 0.004, on_change=lambda s: changes.append((s.state, s.reason)))
    flaky = Flaky(3, ValueError("boom"))
    sup.add(flaky)
    sup.start()
    await asyncio.wait_for(flaky.running.wait(), 5)
    assert flaky.attempts == 4
    assert (ComponentState.DEGRADED, "crashed: ValueError: boom") in changes
    assert sup.statuses()[0].state == ComponentState.RUNNING
    await sup.stop(1)
    assert flaky.stopped.is_set()
    assert sup.statuses()[0].state == ComponentState.STOPPED


async def test_dependency_down_reason_is_shown() -> None:
    sup = Supervisor(0.001, 0.002)
    flaky = Flaky(1, DependencyDown("mysql unreachable: refused"))
    health = sup.add(flaky)
    seen: list[str] = []
    health._on_change = lambda s: seen.append(s.reason)
    sup.start()
    await asyncio.wait_for(flaky.running.wait(), 5)
    assert "mysql unreachable: refused" in seen
    await sup.stop(1)


async def test_backoff_is_capped_and_doubles() -> None:
    sup = Supervisor(0.001, 0.004)
    flaky = Flaky(5, RuntimeError("x"))
    sup.add(flaky)
    sup.start()
    await asyncio.wait_for(flaky.running.wait(), 5)
    assert list(sup.backoffs["flaky"]) == [0.001, 0.002, 0.004, 0.004, 0.004]
    await sup.stop(1)


async def test_stop_interrupts_backoff() -> None:
    degraded = asyncio.Event()
    sup = Supervisor(3600, 3600, on_change=lambda s: s.state == "degraded" and degraded.set())
    flaky = Flaky(10, RuntimeError("x"))
    sup.add(flaky)
    sup.start()
    # The supervisor marks the crash and goes straight into its hour-long backoff.
    await degraded.wait()
    # Stop gives components 60 s, far less than the backoff: had it to sit the backoff
    # out, the component would be named late.
    assert await sup.stop(60) == []
    assert flaky.attempts == 1
    assert list(sup.backoffs["flaky"]) == [3600]
    assert sup.statuses()[0].state == ComponentState.STOPPED
