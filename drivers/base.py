"""The one interface every test-phone driver implements, and what crosses it.

A driver opens one modem, tells who it is and how healthy it is, yields the
messages the handset receives (decoded and reassembled, with the storage
indices they occupy), and deletes them when asked. It never decides what a
message means for a spam test and never deletes anything on its own: the
caller records a receipt durably first, then deletes it.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import StrEnum

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
    """A message as read from the modem, with where its parts are stored."""

    message: Message
    indices: tuple[int, ...]
    raw: tuple[str, ...]  # the parts' PDUs in hex, as the modem printed them
    via: str  # "cmti" (notified) or "sweep" (found by listing the storage)


class TestPhoneDriver(abc.ABC):
    """One modem with one test SIM."""

    __test__ = False  # not a pytest class, whatever its name

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
    def received(self) -> AsyncIterator[Received]:
        """Messages as they arrive: notified ones at once, the rest at the next sweep."""

    @abc.abstractmethod
    async def sweep(self) -> int:
        """List the storage and surface anything not yet reported; returns how many."""

    @abc.abstractmethod
    async def delete(self, indices: tuple[int, ...]) -> None: ...

    @property
    @abc.abstractmethod
    def is_open(self) -> bool: ...
