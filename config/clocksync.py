"""Whether the system clock is synchronised (NTP or PTP), as the kernel says.

The node's calendar decisions (night holds, log-table months, the result horizon) trust
the system clock, so the status and `/metrics` show whether something keeps it right.
Read with ``adjtimex(2)`` in read-only mode (``modes = 0``, no privilege needed): the
kernel's ``STA_UNSYNC`` flag is what ``timedatectl``'s "System clock synchronized" shows,
without D-Bus or systemd running. Imports nothing of ours.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from dataclasses import dataclass

# <sys/timex.h>
STA_UNSYNC = 0x0040  # the clock is not synchronised
STA_NANO = 0x2000  # offsets are in nanoseconds, not microseconds
TIME_ERROR = 5  # adjtimex's answer while unsynchronised


class _Timeval(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long))


class Timex(ctypes.Structure):
    """``struct timex`` (Linux); ctypes lays out the padding as the C compiler does."""

    _fields_ = (
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", _Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 11),
    )


@dataclass(frozen=True, slots=True)
class ClockSync:
    """What the kernel says of the system clock; `synchronised` is None when unknown."""

    synchronised: bool | None
    max_error_s: float | None = None
    offset_s: float | None = None
    detail: str = ""

    def as_json(self) -> dict[str, object]:
        return {
            "synchronised": self.synchronised,
            "max_error_s": self.max_error_s,
            "offset_s": self.offset_s,
            "detail": self.detail,
        }


def from_timex(answer: int, timex: Timex) -> ClockSync:
    """Read one ``adjtimex`` answer (its return value and the filled structure)."""
    if answer < 0:
        return ClockSync(None, detail=f"adjtimex failed ({ctypes.get_errno()})")
    unit = 1e9 if timex.status & STA_NANO else 1e6
    synchronised = not timex.status & STA_UNSYNC and answer != TIME_ERROR
    return ClockSync(
        synchronised,
        max_error_s=timex.maxerror / 1e6,  # always microseconds
        offset_s=timex.offset / unit,
        detail="adjtimex",
    )


def _adjtimex() -> Callable[[ctypes._Pointer[Timex]], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        function = ctypes.CDLL(name, use_errno=True).adjtimex
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.POINTER(Timex)]
    function.restype = ctypes.c_int
    answer: Callable[[ctypes._Pointer[Timex]], int] = function
    return answer


_ADJTIMEX = _adjtimex()


def system_clock_sync() -> ClockSync:
    """The system clock's synchronisation now (a system call; cheap)."""
    if _ADJTIMEX is None:
        return ClockSync(None, detail="adjtimex unavailable")
    timex = Timex(modes=0)
    return from_timex(_ADJTIMEX(ctypes.pointer(timex)), timex)
