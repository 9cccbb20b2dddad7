"""The node's writer role as every component sees it: who holds it, and waiting for it.

The dispatcher takes the role (`daemon/dispatcher/writer.py`: the MySQL named lock and
its fencing epoch) and records it here. The components that must act only on the node's
writer — the spam-test engine (it writes agent rows and sends through the test phones)
and the modem managers (one process per serial port) — wait here while this daemon is
passive, and stop when the role is lost (`while_writer`). Holds no connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from dispatch.ledger import Fence, Holder


class Role(StrEnum):
    STARTING = "starting"
    WRITER = "writer"
    PASSIVE = "passive"


@dataclass(slots=True)
class WriterState:
    """The role as held now (what the status shows), with events to wait on."""

    role: Role = Role.STARTING
    epoch: int | None = None
    holder: Holder | None = None
    fence: Fence | None = None
    _held: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _gone: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def __post_init__(self) -> None:
        self._gone.set()

    @property
    def is_writer(self) -> bool:
        """Whether the components that wait for the role may act: this daemon took it and
        no other daemon has been seen holding it since."""
        return self._held.is_set()

    def taken(self, fence: Fence) -> None:
        self.role, self.epoch, self.holder, self.fence = Role.WRITER, fence.epoch, None, fence
        self._gone.clear()
        self._held.set()

    def passive(self, holder: Holder | None) -> None:
        """Another daemon holds the role: whatever waits for it stops."""
        self.role, self.fence, self.holder = Role.PASSIVE, None, holder
        self.epoch = None if holder is None else holder.epoch
        self._held.clear()
        self._gone.set()

    def suspended(self) -> None:
        """The dispatcher stopped (an outage, a lost lock session) and will ask again: no
        fence until then, but the components that wait for the role go on until another
        daemon is known to hold it (`passive`). A MySQL restart must not close the test
        phones' ports or stop receipts, which need only PostgreSQL."""
        self.role, self.fence, self.epoch = Role.STARTING, None, None

    def describe(self) -> str:
        """Why a component waits, for its status reason."""
        if self.role == Role.PASSIVE and self.holder is not None:
            return f"passive: the node's writer role is {self.holder.describe()}"
        if self.role == Role.PASSIVE:
            return "passive: another daemon holds the node's writer role"
        return "passive: waiting for the dispatcher to take the node's writer role"

    async def until_writer(self) -> None:
        await self._held.wait()

    async def until_not_writer(self) -> None:
        await self._gone.wait()

    def as_json(self) -> dict[str, Any]:
        held = self.holder
        return {
            "role": self.role.value,
            "epoch": self.epoch,
            "holder": None
            if held is None
            else {"host": held.host, "pid": held.pid, "since": held.since.isoformat()},
        }


async def while_writer(
    state: WriterState, work: Callable[[], Awaitable[None]], waiting: Callable[[str], None]
) -> None:
    """Run `work` only while this daemon holds the writer role: until then `waiting` is
    told why and nothing runs; a lost role cancels `work`, which starts again when the
    role is back. Returns (or raises) when `work` does."""
    while True:
        if not state.is_writer:
            waiting(state.describe())
            await state.until_writer()
        task = asyncio.ensure_future(work())
        lost = asyncio.ensure_future(state.until_not_writer())
        try:
            done, _ = await asyncio.wait({task, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pending in (task, lost):
                pending.cancel()
            await asyncio.gather(task, lost, return_exceptions=True)
        if task in done:
            task.result()
            return
