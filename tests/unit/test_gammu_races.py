"""A sweep and a notified read racing on the gammu driver surface a message once.

python-gammu serves one call at a time on the driver's one worker thread, so a read
after ``+CMTI`` can wait behind a sweep's listing that already returns the same
location. Here a fake state machine holds one message and lets the listing finish only
once the notified read is queued behind it: the order the integration test
(`test_gammu_driver_survives_unplug_and_replug`) met now and then, when the message was
recorded twice.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime
from typing import Any

import gammu

from drivers import pdu
from drivers.gammu_phone import GammuPhone
from tests.unit.test_gammu_recovery import HungModemStateMachine

SENT = datetime(2026, 11, 17, 3, 0, tzinfo=UTC)


def stored_sms(text: str = "swept and notified", location: int = 1) -> dict[str, Any]:
    (raw,) = pdu.encode_deliver("0212345678", text, SENT)
    sms: dict[str, Any] = gammu.DecodePDU(raw)
    sms["Location"] = location
    return sms


class OneMessageStateMachine(HungModemStateMachine):
    """Holds one message at location 1; the listing waits until the read is queued."""

    def __init__(self) -> None:
        super().__init__()
        self.sms = stored_sms()
        self.read_queued = threading.Event()
        self.listed = False

    def GetNextSMS(self, Folder: int, Start: bool = False, Location: int = 0) -> list[Any]:
        if Start and not self.listed:
            self.listed = True
            assert self.read_queued.wait(timeout=10), "the notified read was never queued"
            return [self.sms]
        raise gammu.ERR_EMPTY({"Text": "No more entries.", "Code": 22})

    def GetSMS(self, Folder: int, Location: int) -> list[Any]:
        return [self.sms]


async def test_a_read_queued_behind_a_sweep_that_found_its_message_surfaces_it_once() -> None:
    sm = OneMessageStateMachine()
    phone = GammuPhone("/dev/null", 1.0, state_machine=lambda: sm)
    await phone.open()
    try:
        assert phone._executor is not None
        submit = phone._executor.submit

        def watching_submit(fn: Any, *args: Any, **kwargs: Any) -> Any:
            if fn == sm.GetSMS:
                sm.read_queued.set()
            return submit(fn, *args, **kwargs)

        phone._executor.submit = watching_submit  # type: ignore[method-assign]
        phone._locations.put_nowait(1)  # the +CMTI for location 1
        await phone.sweep()
        # The worker serves calls in order: once this returns, the read's reply was taken.
        await phone._call(sm.GetManufacturer)
        assert phone.stored.emitted == 1
    finally:
        await phone.close()


class SlotReusingStateMachine(HungModemStateMachine):
    """Location 1 holds a message; deleting it stores the next one there at once, and
    gammu's incoming-SMS callback fires while DeleteSMS still runs (the +CMTI came with
    the delete's reply), before the driver has forgotten the deleted message."""

    def __init__(self) -> None:
        super().__init__()
        self.storage: dict[int, dict[str, Any]] = {1: stored_sms("the first")}
        self.callback: Any = None
        self.arrivals = 1  # messages still to land in the next freed location

    def SetIncomingCallback(self, callback: Any) -> None:
        self.callback = callback

    def GetNextSMS(self, Folder: int, Start: bool = False, Location: int = 0) -> list[Any]:
        later = sorted(i for i in self.storage if Start or i > Location)
        if not later:
            raise gammu.ERR_EMPTY({"Text": "No more entries.", "Code": 22})
        return [self.storage[later[0]]]

    def GetSMS(self, Folder: int, Location: int) -> list[Any]:
        if Location not in self.storage:
            raise gammu.ERR_EMPTY({"Text": "Empty location.", "Code": 22})
        return [self.storage[Location]]

    def DeleteSMS(self, Folder: int, Location: int) -> None:
        del self.storage[Location]
        if self.arrivals > 0:
            self.arrivals -= 1
            self.storage[Location] = stored_sms("the second", Location)
            self.callback(self, "SMS", {"Location": Location})


async def test_a_message_in_the_location_just_deleted_is_read_at_its_announcement() -> None:
    sm = SlotReusingStateMachine()
    phone = GammuPhone("/dev/null", 1.0, state_machine=lambda: sm)
    await phone.open()
    try:
        await phone.sweep()
        first = await phone.next_received()
        await phone.delete(first.indices)
        async with asyncio.timeout(5):  # no sweep runs: only the announcement can find it
            second = await phone.next_received()
        await phone.delete(second.indices)
        assert first.message is not None and second.message is not None
        assert (first.via, first.message.text) == ("sweep", "the first")
        assert (second.via, second.message.text, second.indices) == ("cmti", "the second", (1,))
        assert sm.storage == {}
    finally:
        await phone.close()
