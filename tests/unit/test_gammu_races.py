"""A sweep and a notified read racing on the gammu driver surface a message once.

python-gammu serves one call at a time on the driver's one worker thread, so a read
after ``+CMTI`` can wait behind a sweep's listing that already returns the same
location. Here a fake state machine holds one message and lets the listing finish only
once the notified read is queued behind it: the order the integration test
(`test_gammu_driver_survives_unplug_and_replug`) met now and then, when the message was
recorded twice.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import gammu

from drivers import pdu
from drivers.gammu_phone import GammuPhone
from tests.unit.test_gammu_recovery import HungModemStateMachine

SENT = datetime(2026, 11, 17, 3, 0, tzinfo=UTC)


def stored_sms() -> dict[str, Any]:
    (raw,) = pdu.encode_deliver("0212345678", "swept and notified", SENT)
    sms: dict[str, Any] = gammu.DecodePDU(raw)
    sms["Location"] = 1
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
