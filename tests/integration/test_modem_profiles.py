"""Every simulated modem family (docs/test-phones.md) with both drivers and the gammu CLI.

Each profile prints its boot codes, names its own storage in ``+CMTI`` and answers
``AT+CPMS`` with its own memories; the drivers must read Korean texts from all of them.
The simulator runs in this process on a real pty; the gammu CLI is an independent client.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from drivers import pdu
from drivers.at_phone import ATPhone
from drivers.base import Received, SimState
from drivers.gammu_phone import GammuPhone
from simulators.modem import PROFILES, ModemProfile, SimModem
from tests.integration.modem_fixtures import node_config

KST = timezone(timedelta(hours=9))
KOREAN = "안녕하세요 한줄로 모뎀 시험 😀"


@pytest.fixture(params=[p.value for p in ModemProfile])
async def modem(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SimModem]:
    config = node_config(tmp_path)
    sim = SimModem(config.modems[1], 10, "+821000000000", 1.0, profile=ModemProfile(request.param))
    sim.plug()  # the family's boot codes wait in the pty for whoever opens it
    yield sim
    await sim.close()


def send(modem: SimModem, text: str) -> None:
    assert modem.deliver(pdu.encode_deliver("0212345678", text, datetime.now(KST), reference=7))


async def received(phone: ATPhone | GammuPhone) -> Received:
    return await asyncio.wait_for(phone.next_received(), 10)


async def test_at_driver_on_every_profile(modem: SimModem) -> None:
    phone = ATPhone(str(modem.stable_path), 1.0)
    await phone.open()
    try:
        identity = await phone.identify()
        assert identity.manufacturer == modem.traits.manufacturer
        health = await phone.health()
        assert health.sim == SimState.READY and health.storage_total == 10
        assert modem.memory == modem.traits.memories[0] or modem.memory == "SM"
        send(modem, KOREAN)
        got = await received(phone)
        assert got.message.text == KOREAN and got.via == "cmti"
        await phone.delete(got.indices)
        assert modem.storage == {}
        # Routed straight to the terminal (CNMI <mt>=2): +CMT, nothing stored.
        await phone.command("AT+CNMI=2,2,0,0,0")
        send(modem, "직접 전달 " + modem.profile.value)
        got = await received(phone)
        assert got.via == "cmt" and got.indices == () and got.message.text.startswith("직접")
        # A reset prints the boot codes again (and SIMCOM's echo comes back on).
        await phone.command("AT+CFUN=1,1")
        await phone.close()
        await asyncio.sleep(0.3)  # the simulated restart's boot codes (BOOT_URC_DELAY_S)
        await phone.open()
        assert (await phone.identify()).manufacturer == modem.traits.manufacturer
    finally:
        await phone.close()


async def test_gammu_driver_on_every_profile(modem: SimModem) -> None:
    phone = GammuPhone(str(modem.stable_path), 1.0)
    await phone.open()
    try:
        assert (
            (await phone.identify())
            .manufacturer.lower()
            .startswith(modem.traits.manufacturer.lower()[:5])
        )
        send(modem, KOREAN)
        got = await received(phone)
        assert got.message.text == KOREAN
        await phone.delete(got.indices)
        assert modem.storage == {}
    finally:
        await phone.close()


gammu_cli = shutil.which("gammu")


@pytest.mark.skipif(gammu_cli is None, reason="Debian gammu is installed by `make setup`")
async def test_gammu_cli_reads_korean_from_every_profile(modem: SimModem, tmp_path: Path) -> None:
    assert gammu_cli is not None
    send(modem, KOREAN)
    rc = tmp_path / "gammurc"
    rc.write_text(f"[gammu]\ndevice = {modem.stable_path}\nconnection = at\n")
    process = await asyncio.create_subprocess_exec(
        gammu_cli,
        "-c",
        str(rc),
        "geteachsms",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "LC_ALL": "C.UTF-8"},
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode(errors="replace")
    assert KOREAN in out.decode()


def test_every_profile_is_documented() -> None:
    text = (Path(__file__).parents[2] / "docs" / "test-phones.md").read_text()
    for profile in PROFILES:
        assert f"`{profile.value}`" in text
