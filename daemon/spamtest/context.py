"""What every part of the spam-test engine shares: its seams, its memory (active tests,
busy phones, grace samples, canary flags, the queue's view) and the clocks.

Built once by the engine (`engine.py`) on the real backends, and by the unit tests on
fakes. Three clocks, on purpose: `monotonic` times every duration a verdict depends on
(the grace, the timeout, the modems' ready history), so a step of the system clock moves
none of them; `now` is the real UTC time stamped on rows for people and for the store
(a receipt is compared with its test's start in PostgreSQL's own time); the node clock
(`runtime.clock`) makes calendar decisions: the agents' log-table months. Holds no
connection and runs no task.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from config.clock import NodeClock
from config.model import SpamTestSection
from daemon.runtime import Runtime
from daemon.spamtest.ports import AgentWatch, PhoneWatch, SpamBook, TestTables
from daemon.spamtest.state import ActiveTest
from dispatch.fairness import Row
from dispatch.spamtests.devices import Registration
from dispatch.spamtests.rules import grace_for

# Completed tests shown in the status.
RECENT = 10


def wall_clock() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class SpamContext:
    runtime: Runtime
    book: SpamBook
    tables: TestTables
    phones: dict[str, PhoneWatch]  # modem label -> its manager
    agents: AgentWatch
    now: Callable[[], datetime] = wall_clock
    monotonic: Callable[[], float] = time.monotonic
    # Set to run the next pass now (a receipt, a NOTIFY, a slot decided on a busy phone).
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    active: dict[uuid.UUID, ActiveTest] = field(default_factory=dict)
    # modem label -> the active tests with an undecided slot on it (`phones.py`: tests
    # whose receipts cannot be confused share a phone); a free phone has no entry.
    busy: dict[str, set[uuid.UUID]] = field(default_factory=dict)
    freed_at: dict[str, datetime] = field(default_factory=dict)
    samples: dict[str, deque[float]] = field(default_factory=dict)
    flagged: dict[str, datetime] = field(default_factory=dict)  # modem -> canary missed at
    last_canary: dict[str, dict[str, Any]] = field(default_factory=dict)
    last_served: dict[str | None, datetime] = field(default_factory=dict)
    queue_view: list[dict[str, Any]] = field(default_factory=list)
    recent: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RECENT))
    canary_due: dict[str, float] = field(default_factory=dict)  # modem -> monotonic time
    started: float = 0.0  # monotonic time the engine started
    rr: int = 0  # round-robin over the test agent tables
    log_table_cache: dict[tuple[str, date], list[str]] = field(default_factory=dict)
    # Each phone's proof of a complete storage read (monotonic), as it stood before this
    # pass attributed every receipt recorded until then; only these may make `blocked`.
    read_proofs: dict[str, float | None] = field(default_factory=dict)
    # The phones' rows in the web's device table (`web_devices.py`): when they were last
    # registered (monotonic, for the cadence; wall, for the status), what that did, and
    # the failure since then (phones masked).
    devices_mono: float | None = None
    devices_at: datetime | None = None
    devices_done: Registration | None = None
    devices_error: str | None = None

    @property
    def node_id(self) -> str:
        return self.runtime.config.node.id

    @property
    def section(self) -> SpamTestSection:
        return self.runtime.config.spam_tests

    @property
    def clock(self) -> NodeClock:
        return self.runtime.clock

    def deadline(self, test: Row) -> float | None:
        """By when (monotonic) a test read just now must be decided: a web test's window
        counts from its created_at, its age (``age_s``) read in PostgreSQL's own time, so
        neither the node's wall clock nor a step of it moves the deadline."""
        if not test["web"]:
            return None
        section = self.section
        return (
            self.monotonic()
            + section.web_window_s
            - section.web_window_margin_s
            - float(test["age_s"])
        )

    def grace(self, carrier: str) -> float:
        return grace_for(list(self.samples.get(carrier, ())), self.section)

    def sample(self, carrier: str, delay: float | None) -> None:
        """One observed success→receipt delay of a carrier (the grace follows them)."""
        if delay is None:
            return
        samples = self.samples.setdefault(carrier, deque(maxlen=self.section.grace_samples))
        samples.append(max(0.0, float(delay)))
