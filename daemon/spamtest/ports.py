"""The spam-test engine's seams: what it needs from PostgreSQL, the test agent tables,
the test phones and the agent monitor, as interfaces.

The engine talks only to these. `backends.py` implements them on the real pools with the
store's statements (`dispatch/spamtests/store.py`), the agent-table I/O
(`dispatch/handoff.py`, `dispatch/spamtests/agent_rows.py`); the phones are the modem
managers (`daemon/modems.py`); the unit tests implement all of them in memory. Holds no
SQL and no state.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Protocol

from config.model import ModemConfig
from daemon.agents import AgentStatus
from daemon.modems import ModemStatus
from dispatch.fairness import Row
from dispatch.handoff import AgentRow
from dispatch.spamtests.contract import SpamTestSpec, TestStatus, Verdict
from dispatch.spamtests.devices import Registration
from dispatch.spamtests.store import NewResult
from dispatch.store.training import SpamBlocked


class SpamBook(Protocol):
    """The spam tests' PostgreSQL store, bound to this node (`dispatch/spamtests/store.py`)."""

    async def tests_in(self, status: TestStatus, limit: int | None = None) -> list[Row]: ...
    async def results_of(self, test_id: uuid.UUID) -> list[Row]: ...
    async def receipt_delays(self, modems: list[str], count: int) -> list[tuple[str, float]]: ...
    async def last_canaries(self) -> list[tuple[str, str, datetime]]: ...
    async def last_served(self) -> dict[str | None, datetime]: ...
    async def create_tests(self, specs: Sequence[SpamTestSpec]) -> None: ...
    async def start_test(
        self, test_id: uuid.UUID, results: Sequence[NewResult]
    ) -> tuple[datetime, list[int]] | None: ...
    async def record_sent(self, rows: Sequence[tuple[int, int, datetime | None]]) -> None: ...
    async def record_agent_codes(
        self, rows: Sequence[tuple[int, int, datetime | None]]
    ) -> None: ...
    async def record_verdicts(self, rows: Sequence[tuple[int, Verdict, str | None]]) -> None: ...
    async def complete_test(
        self, test_id: uuid.UUID, verdict: Verdict, blocked: SpamBlocked | None
    ) -> None: ...
    async def cancel_test(self, test_id: uuid.UUID) -> tuple[bool, str] | None: ...
    async def unmatched_receipts(self, limit: int) -> list[Row]: ...
    async def record_receipt(
        self,
        result_id: int,
        test_id: uuid.UUID,
        receipt_id: int,
        received_at: datetime,
        delay_s: float | None,
    ) -> None: ...
    async def record_late(
        self,
        result_id: int,
        test_id: uuid.UUID,
        receipt_id: int,
        received_at: datetime,
        delay_s: float | None,
    ) -> Verdict | None:
        """The row passes, marked late; the test's overall verdict now if completed."""
        ...

    async def take_web_tests(self, limit: int, window_s: float) -> tuple[int, list[str]]:
        """The web's new tests, within their window, into the node's queue: (how many,
        rejections)."""
        ...

    async def mark_receipt(self, receipt_id: int, how: str, test_id: uuid.UUID | None) -> None: ...
    async def decided_unreceived(
        self, modem: str, horizon: timedelta, received_at: datetime
    ) -> list[Row]: ...
    async def register_devices(self, phones: Sequence[ModemConfig]) -> Registration:
        """This node's phones active in the web's device table (`devices.py`)."""
        ...


class TestTables(Protocol):
    """The test line group's agent tables as the engine uses them. `test_ref` is what a
    test's rows carry in ``app_etc1`` (the test id)."""

    async def existing(self, tables: Sequence[str]) -> list[str]: ...
    async def find_row(
        self, tables: Sequence[str], test_ref: str, phone: str, msg_type: str
    ) -> int | None: ...
    async def insert(self, rows: Sequence[tuple[str, AgentRow]]) -> list[int]: ...
    async def final_codes(
        self, table: str, logs: Sequence[str], seqnos: Sequence[int], test_refs: Sequence[str]
    ) -> list[tuple[int, int]]: ...
    async def pull_back(self, tables: Sequence[str], test_ref: str) -> list[str]: ...


class PhoneWatch(Protocol):
    """What the engine knows of one test phone (`daemon/modems.py:ModemManager`)."""

    @property
    def modem(self) -> ModemConfig: ...
    @property
    def status(self) -> ModemStatus: ...
    @property
    def ready(self) -> bool: ...
    @property
    def settled(self) -> bool: ...
    @property
    def storage_read_at(self) -> float | None:
        """The latest moment (monotonic) the phone's storage was listed and everything
        it held recorded."""
        ...

    def watched_since(self, start: float) -> bool:
        """Ready and watched since `start` (monotonic)."""
        ...

    def request_read(self) -> None:
        """Ask for a complete read of the storage now."""
        ...


class AgentWatch(Protocol):
    """What the agent monitor knows (`daemon/agents.py`)."""

    @property
    def statuses(self) -> Mapping[int, AgentStatus]: ...
