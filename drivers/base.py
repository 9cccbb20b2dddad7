"""The one interface every test-phone driver implements, and what crosses it.

A driver opens one modem, tells who it is and how healthy it is, yields the
messages the handset receives (decoded and reassembled, with the storage
indices they occupy), and deletes them when asked. It never decides what a
message means for a spam test and never deletes anything on its own: the
caller records a receipt durably first, then deletes it.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import StrEnum

from drivers import pdu
from drivers.pdu import Message


class SimState(StrEnum):
    READY = "ready"
    PIN_REQUIRED = "pin-required"
    PUK_REQUIRED = "puk-required"
    ABSENT = "absent"
    UNKNOWN = "unknown"


class Registration(StrEnum):
    HOME = "home"
    ROAMING = "roaming"
    SEARCHING = "searching"
    DENIED = "denied"
    NOT_REGISTERED = "not-registered"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Identity:
    manufacturer: str
    model: str
    imei: str
    imsi: str


@dataclass(frozen=True, slots=True)
class ModemHealth:
    sim: SimState
    registration: Registration
    operator: str  # MCC-MNC, "" when unknown
    signal: int | None  # 0-31, None when unknown
    storage_used: int | None
    storage_total: int | None

    @property
    def storage_full(self) -> bool:
        return (
            self.storage_used is not None
            and self.storage_total is not None
            and self.storage_used >= self.storage_total
        )

    def not_ready_reason(self, allowed_operators: list[str]) -> str:
        """Why a message could not reach this phone right now ("" when it could)."""
        if self.sim != SimState.READY:
            return f"SIM {self.sim.value}"
        if self.registration not in (Registration.HOME, Registration.ROAMING):
            return f"not registered ({self.registration.value})"
        if self.operator and self.operator not in allowed_operators:
            return f"registered on {self.operator}, expected one of {', '.join(allowed_operators)}"
        if self.signal is None or self.signal == 0:
            return "no signal"
        if self.storage_full:
            return f"storage full ({self.storage_used}/{self.storage_total})"
        return ""


@dataclass(frozen=True, slots=True)
class Received:
    """A message as read from the modem, with where its parts are stored; `message` is
    None for a PDU the codec rejects (`error` says why): it is recorded as undecodable
    and deleted like any other, never left to fill the storage."""

    message: Message | None
    indices: tuple[int, ...]
    raw: tuple[str, ...]  # the parts' PDUs in hex, as the modem printed them
    via: str  # "cmti" (notified), "cmt" (routed to us, not stored) or "sweep" (listed)
    error: str = ""


class StoredMessages:
    """What a driver has read from the modem's storage and not yet deleted.

    Parts are joined by the codec's reassembler in any order; each complete (or
    expired, partial) message comes out of :meth:`next` with the storage indices of
    its parts. Both drivers use this one bookkeeping.
    """

    def __init__(self, partial_timeout_s: float) -> None:
        self.reassembler = pdu.Reassembler(partial_timeout_s)
        self._known: dict[int, str] = {}
        self._homes: dict[int, tuple[int | None, str, str]] = {}
        self._out: asyncio.Queue[Received] = asyncio.Queue()
        # Messages surfaced so far: the caller counts what it consumed against this.
        self.emitted = 0

    def knows(self, index: int, raw: str | None = None) -> bool:
        """True when `index` was read (and, given `raw`, still holds that PDU)."""
        return index in self._known and (raw is None or self._known[index] == raw)

    def held_elsewhere(self, index: int, raw: str) -> int | None:
        """Another index already known to hold exactly `raw` (a read that is not index's)."""
        for other, known in self._known.items():
            if other != index and known == raw:
                return other
        return None

    def add(self, index: int, raw: str, part: pdu.Deliver | None, via: str) -> None:
        """Record a stored PDU; `part` is None for one that is kept but not surfaced."""
        self._known[index] = raw
        if part is None:
            return
        self._homes[id(part)] = (index, raw, via)
        for message in self.reassembler.add(part, time.monotonic()):
            self._emit(message)

    def add_undecodable(self, index: int, raw: str, via: str, error: str) -> None:
        """Record a stored PDU the codec rejects; it is surfaced on its own."""
        self._known[index] = raw
        self.emitted += 1
        self._out.put_nowait(Received(None, (index,), (raw,), via, error))

    def add_direct(self, raw: str, part: pdu.Deliver) -> None:
        """A part delivered without storage (``+CMT``): surfaced, never deleted."""
        self._homes[id(part)] = (None, raw, "cmt")
        for message in self.reassembler.add(part, time.monotonic()):
            self._emit(message)

    def expire(self) -> None:
        for message in self.reassembler.expire(time.monotonic()):
            self._emit(message)

    def _emit(self, message: pdu.Message) -> None:
        homes = [self._homes.pop(id(p)) for p in message.parts]
        vias = {h[2] for h in homes}
        via = vias.pop() if len(vias) == 1 and vias <= {"cmti", "cmt"} else "sweep"
        stored = tuple(h[0] for h in homes if h[0] is not None)
        self.emitted += 1
        self._out.put_nowait(Received(message, stored, tuple(h[1] for h in homes), via))

    def forget(self, index: int) -> None:
        self._known.pop(index, None)

    @property
    def held(self) -> int:
        """How many stored PDUs were read and not yet deleted: what the modem's storage
        count should be once every message in it has been read."""
        return len(self._known)

    def clear(self) -> None:
        self._known.clear()
        self._homes.clear()

    async def next(self) -> Received:
        return await self._out.get()


class TestPhoneDriver(abc.ABC):
    """One modem with one test SIM."""

    __test__ = False  # not a pytest class, whatever its name

    def __init__(self, partial_timeout_s: float) -> None:
        self.stored = StoredMessages(partial_timeout_s)
        # When a command last went unanswered in time: a modem that is late with its
        # replies may miss a message without any state change to show for it.
        self.last_timeout_at: float | None = None  # monotonic

    async def received(self) -> AsyncIterator[Received]:
        """Messages as they arrive: notified ones at once, the rest at the next sweep."""
        while True:
            yield await self.stored.next()

    async def next_received(self) -> Received:
        return await self.stored.next()

    @abc.abstractmethod
    async def open(self) -> None:
        """Open the port exclusively and prepare the modem for receiving."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def identify(self) -> Identity: ...

    @abc.abstractmethod
    async def health(self) -> ModemHealth: ...

    @abc.abstractmethod
    async def sweep(self) -> int:
        """List the storage and surface anything not yet reported; returns how many."""

    @abc.abstractmethod
    async def delete(self, indices: tuple[int, ...]) -> None: ...

    @property
    @abc.abstractmethod
    def is_open(self) -> bool: ...
