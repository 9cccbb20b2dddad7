"""Whether the system clock is synchronised: the kernel's adjtimex answer, read."""

from __future__ import annotations

import ctypes

from config.clocksync import (
    STA_NANO,
    STA_UNSYNC,
    TIME_ERROR,
    ClockSync,
    Timex,
    from_timex,
    system_clock_sync,
)
from daemon.cli.status import render_status
from tests.unit.status_sample import snapshot


def test_the_struct_is_the_kernels_size() -> None:
    # struct timex on 64-bit Linux: 208 bytes (a wrong layout would read the wrong fields).
    if ctypes.sizeof(ctypes.c_long) == 8:
        assert ctypes.sizeof(Timex) == 208


def test_unsync_flag_or_time_error_means_not_synchronised() -> None:
    synced = Timex(status=0, maxerror=12_000, offset=250)
    assert from_timex(0, synced) == ClockSync(True, 0.012, 0.00025, "adjtimex")
    assert from_timex(0, Timex(status=STA_UNSYNC, maxerror=16_000_000)).synchronised is False
    assert from_timex(TIME_ERROR, Timex(status=0)).synchronised is False
    nano = from_timex(0, Timex(status=STA_NANO, offset=250))
    assert nano.synchronised is True and nano.offset_s == 250e-9
    assert from_timex(-1, Timex()).synchronised is None


def test_the_running_kernel_answers() -> None:
    sync = system_clock_sync()
    assert sync.synchronised in (True, False) and sync.detail == "adjtimex"
    assert sync.max_error_s is not None and sync.max_error_s >= 0


def test_status_says_whether_the_clock_is_synchronised() -> None:
    snap = snapshot()
    assert "system clock synchronised, max error 12 ms" in render_status(snap)
    snap["node"]["clock_sync"] = ClockSync(False, 16.0, 0.0, "adjtimex").as_json()
    coloured = render_status(snap, color=True)
    assert "NOT synchronised" in coloured and "\x1b[1;31mNOT synchronised" in coloured
