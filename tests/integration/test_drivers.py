"""One suite, both drivers (`at` and `gammu`), against the modem simulator on a real pty."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone

import pytest

from drivers import pdu, wap
from drivers.at import CommandTimeout, PortClosed
from drivers.at_phone import ATPhone
from drivers.base import Registration, SimState, TestPhoneDriver
from drivers.errors import DriverError
from drivers.gammu_phone import GammuPhone
from simulators.modem import ModemFault, SimModem

KST = timezone(timedelta(hours=9))


@pytest.fixture(params=["at", "gammu"])
async def driver(
    request: pytest.FixtureRequest,
    kt_modem: SimModem,
) -> AsyncIterator[TestPhoneDriver]:
    path = str(kt_modem.stable_path)
    phone: TestPhoneDriver = ATPhone(path, 1.0) if request.param == "at" else GammuPhone(path, 1.0)
    await phone.open()
    yield phone
    await phone.close()


def send(modem: SimModem, text: str, sender: str = "0212345678") -> None:
    assert modem.deliver(
        pdu.encode_deliver(
            sender, text, datetime.now(KST), "+821000000000", reference=len(text) % 256
        )
    )


async def next_received(phone: TestPhoneDriver) -> object:
    return await asyncio.wait_for(phone.next_received(), 5)  # type: ignore[attr-defined]


async def test_identity_and_health(driver: TestPhoneDriver) -> None:
    identity = await driver.identify()
    assert identity.manufacturer == "Hanjullo Simulated Modems"
    assert identity.imsi.startswith("45008") and len(identity.imei) == 15
    health = await driver.health()
    assert health.sim == SimState.READY and health.registration == Registration.HOME
    assert health.operator == "45008" and health.signal
    assert (health.storage_used, health.storage_total) == (0, 10)
    assert health.not_ready_reason(["45008"]) == ""


@pytest.mark.parametrize(
    "text", ["안녕하세요 한줄로", "plain [ascii] €", "긴 메시지 " * 40, "emoji 😀 and 한글"]
)
async def test_notified_texts_arrive_decoded_and_joined(
    driver: TestPhoneDriver,
    kt_modem: SimModem,
    text: str,
) -> None:
    send(kt_modem, text)
    received = await next_received(driver)
    assert received.message.text == text and received.message.complete  # type: ignore[attr-defined]
    assert received.via == "cmti"  # type: ignore[attr-defined]
    assert kt_modem.counters.cmgl == 0  # read because of +CMTI, not by listing
    await driver.delete(received.indices)  # type: ignore[attr-defined]
    assert kt_modem.storage == {}


async def test_lms_arrives_as_an_mms_notification(
    driver: TestPhoneDriver,
    kt_modem: SimModem,
) -> None:
    note = wap.MmsNotification(
        "+8215886000",
        "한줄로 LMS 안내 제목입니다 조금 길게 씁니다",
        2400,
        "http://mms.sim.hanjullo/kt/00000042",
        "T0000000042",
    )
    assert kt_modem.deliver(
        pdu.encode_wap_push(
            "+8215886000", wap.encode_notification(note), datetime.now(KST), reference=3
        )
    )
    received = await next_received(driver)
    message = received.message  # type: ignore[attr-defined]
    assert message.kind == pdu.Kind.MMS_NOTIFICATION and message.mms is not None
    assert message.mms.subject == note.subject and message.mms.size == 2400
    assert message.sender == "+8215886000"


async def test_sweep_finds_texts_whose_notification_was_lost(
    driver: TestPhoneDriver,
    kt_modem: SimModem,
) -> None:
    saved = kt_modem.settings.cnmi
    kt_modem.settings.cnmi = (0, 0, 0, 0, 0)  # the URC is lost (e.g. modem restarted)
    send(kt_modem, "no notification for me")
    kt_modem.settings.cnmi = saved
    assert await driver.sweep() == 1
    received = await next_received(driver)
    assert received.message.text == "no notification for me"  # type: ignore[attr-defined]
    assert received.via == "sweep"  # type: ignore[attr-defined]
    assert await driver.sweep() == 0  # known and not yet deleted: not surfaced twice


@pytest.mark.parametrize(
    ("fault", "check"),
    [
        (ModemFault.SIM_LOCKED, lambda h: h.sim == SimState.PIN_REQUIRED),
        (ModemFault.NO_NETWORK, lambda h: h.registration == Registration.SEARCHING),
    ],
)
async def test_health_reports_faults(
    driver: TestPhoneDriver,
    kt_modem: SimModem,
    fault: ModemFault,
    check: object,
) -> None:
    kt_modem.set_fault(fault)
    health = await driver.health()
    assert check(health)  # type: ignore[operator]
    assert health.not_ready_reason(["45008"]) != ""


async def test_full_storage_is_reported(driver: TestPhoneDriver, kt_modem: SimModem) -> None:
    kt_modem.settings.cnmi = (0, 0, 0, 0, 0)
    for i in range(10):
        send(kt_modem, f"fill {i}")
    health = await driver.health()
    assert health.storage_full and "storage full" in health.not_ready_reason(["45008"])


async def test_unplug_fails_commands_with_port_closed(
    driver: TestPhoneDriver,
    kt_modem: SimModem,
) -> None:
    kt_modem.set_fault(ModemFault.UNPLUG)
    with pytest.raises((PortClosed, DriverError)):
        for _ in range(20):
            await driver.health()
            await asyncio.sleep(0.05)


async def test_late_replies_are_drained_and_never_answer_the_next_read(kt_modem: SimModem) -> None:
    """A modem whose replies come after the timeout: commands fail, and once it is
    back to normal every read is its own index's (the late replies were drained)."""
    kt_modem.late_delay_s = 1.2  # past the 0.5 s timeout, within the 1.5 s resync
    phone = ATPhone(str(kt_modem.stable_path), 0.5)
    await phone.open()
    try:
        kt_modem.settings.cnmi = (0, 0, 0, 0, 0)
        send(kt_modem, "first text at index one")
        send(kt_modem, "second text at index two")
        kt_modem.set_fault(ModemFault.LATE)
        with pytest.raises(CommandTimeout):
            await phone.command("AT+CMGR=1", ("+CMGR:",))
        kt_modem.set_fault(ModemFault.OK)
        reply = await phone.command("AT+CMGR=2", ("+CMGR:",))
        decoded = pdu.decode(reply.lines[-1])
        assert isinstance(decoded, pdu.Deliver) and decoded.text == "second text at index two"
        assert phone.protocol.engine.resyncs == 1
        assert await phone.sweep() == 2
        texts = sorted([(await next_received(phone)).message.text for _ in range(2)])  # type: ignore[attr-defined]
        assert texts == ["first text at index one", "second text at index two"]
    finally:
        await phone.close()


async def test_gammu_recovery_of_a_hung_modem_frees_its_worker_and_tty(
    kt_modem: SimModem,
) -> None:
    """python-gammu itself: a call stuck on a hung modem is aborted, the tty released,
    and the port opens again at once (ten recoveries with a fake gammu are a unit test)."""

    def counts() -> tuple[int, int]:
        return threading.active_count(), len(os.listdir("/proc/self/fd"))

    before = counts()
    for _ in range(2):
        kt_modem.set_fault(ModemFault.OK)
        phone = GammuPhone(str(kt_modem.stable_path), 0.3)
        await phone.open()
        kt_modem.set_fault(ModemFault.HANG)
        with pytest.raises(DriverError):
            await phone.health()
        await phone.close()
        assert phone.abandoned_workers == 1
        for thread in [t for t in threading.enumerate() if t.name.startswith("gammu")]:
            thread.join(timeout=5)
    assert counts() == before
