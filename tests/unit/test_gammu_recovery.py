"""Recovering a hung modem on the gammu driver leaks neither threads nor descriptors.

python-gammu's calls block its one worker thread; a modem that stops answering keeps
that thread inside gammu. Here a fake state machine stands in for python-gammu with the
two properties that matter: ``Init`` opens the device (a real pty) and a call on a hung
modem blocks until ``Abort`` (python-gammu's thread-safe abort). The real library is
exercised the same way in tests/integration/test_drivers.py.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from pathlib import Path
from typing import Any

import gammu
import pytest

from drivers.errors import DriverError
from drivers.gammu_phone import GammuPhone


class HungModemStateMachine:
    """Opens the configured device; every status call blocks until aborted."""

    def __init__(self) -> None:
        self.device = ""
        self.fd: int | None = None
        self.aborted = threading.Event()

    def ReadConfig(self, Filename: str) -> None:
        match = re.search(r"device = (.*)", Path(Filename).read_text())
        assert match is not None
        self.device = match.group(1).strip()

    def Init(self) -> None:
        self.fd = os.open(self.device, os.O_RDWR | os.O_NOCTTY)

    def SetIncomingCallback(self, _callback: Any) -> None:
        pass

    def SetIncomingSMS(self, _enable: bool) -> None:
        pass

    def ReadDevice(self) -> int:
        return 0

    def GetSecurityStatus(self) -> None:
        if self.aborted.wait(timeout=60):  # the modem never answers
            raise gammu.ERR_ABORTED({"Text": "Operation aborted.", "Code": 70})

    def GetManufacturer(self) -> str:
        return "Fake"

    def Abort(self) -> None:
        self.aborted.set()

    def Terminate(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def gammu_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("gammu")]


@pytest.fixture(autouse=True)
def fake_gammu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gammu, "StateMachine", HungModemStateMachine)


@pytest.fixture
def pty_device(tmp_path: Path) -> Any:
    master, slave = os.openpty()
    link = tmp_path / "modem"
    link.symlink_to(os.ttyname(slave))
    yield str(link)
    os.close(master)
    os.close(slave)


async def test_ten_recoveries_of_a_hung_modem_leave_threads_and_fds_as_they_were(
    pty_device: str,
) -> None:
    threads_before, fds_before = threading.active_count(), open_fds()
    abandoned = 0
    for _ in range(10):
        phone = GammuPhone(pty_device, 0.05)
        await phone.open()
        with pytest.raises(DriverError):
            await phone.health()  # times out: the worker is stuck inside "gammu"
        with pytest.raises(DriverError, match="still in a call"):
            await phone.identify()  # nothing is queued behind the stuck call
        await phone.close()
        abandoned += phone.abandoned_workers
        for thread in gammu_threads():
            thread.join(timeout=5)
    assert abandoned == 10
    assert gammu_threads() == []
    assert (threading.active_count(), open_fds()) == (threads_before, fds_before)


def descriptors_on(device: str) -> int:
    """How many of this process's descriptors are open on `device`'s tty."""
    target = os.path.realpath(device)
    count = 0
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{name}") == target
    return count


async def test_a_stuck_worker_releases_the_tty_at_once(pty_device: str) -> None:
    phone = GammuPhone(pty_device, 0.05)
    await phone.open()
    held = descriptors_on(pty_device)
    with pytest.raises(DriverError):
        await phone.health()
    await phone.close()
    assert descriptors_on(pty_device) == held - 1  # the fixture's own slave descriptor stays
