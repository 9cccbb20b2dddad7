"""Every simulated modem family × every modem fault mode, with both drivers.

For each profile (docs/test-phones.md), fault and driver: open the driver on a healthy
modem, switch the fault on, deliver a Korean text and give the driver a few seconds;
then clear the fault, reopen if the driver lost the modem, and require that exactly
the delivered text comes out of the driver, decoded, with nothing else (never a wrong
or doubled message). A fault may make the driver fail in between (that is what a
device_error is made of); it may not make it lie. Prints one line per cell and
`matrix_failures <number>` last (goal 0). Too long for the test suite (minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from drivers import pdu
from drivers.at_phone import ATPhone
from drivers.base import TestPhoneDriver
from drivers.errors import DriverError
from drivers.gammu_phone import GammuPhone
from simulators.modem import ModemFault, ModemProfile, SimModem
from tests.integration.modem_fixtures import node_config

KST = timezone(timedelta(hours=9))
# How long the driver lives with the fault before it is cleared.
FAULT_WINDOW_S = 3.0
# How long, once the modem is healthy again, the text may take to come out.
RECOVERY_S = 15.0
COMMAND_TIMEOUT_S = 0.5


async def drain(phone: TestPhoneDriver, seconds: float) -> list[str]:
    texts: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            got = await asyncio.wait_for(
                phone.next_received(), max(0.05, deadline - time.monotonic())
            )
        except TimeoutError:
            break
        texts.append(got.message.text)
        with contextlib.suppress(DriverError):
            await phone.delete(got.indices)
    return texts


def make(driver: str, modem: SimModem) -> TestPhoneDriver:
    path = str(modem.stable_path)
    if driver == "at":
        return ATPhone(path, COMMAND_TIMEOUT_S)
    return GammuPhone(path, COMMAND_TIMEOUT_S)


async def cell(profile: ModemProfile, fault: ModemFault, driver: str, root: Path) -> str:
    """ "" when the cell passes, else what went wrong."""
    directory = Path(tempfile.mkdtemp(dir=root))
    config = node_config(directory)
    modem = SimModem(config.modems[1], 10, "+821000000000", 1.0, profile=profile, late_delay_s=1.2)
    modem.plug()
    text = f"매트릭스 {profile.value} {fault.value} {driver} 한줄로"
    phone = make(driver, modem)
    seen: list[str] = []
    try:
        await phone.open()
        modem.set_fault(fault)
        modem.deliver(pdu.encode_deliver("0212345678", text, datetime.now(KST), reference=9))
        with contextlib.suppress(DriverError):
            await phone.health()
        seen += await drain(phone, FAULT_WINDOW_S)
        modem.set_fault(ModemFault.OK)
        if fault in (ModemFault.SIM_LOCKED, ModemFault.NO_NETWORK, ModemFault.UNPLUG):
            # The network held the text while the handset could not take it.
            modem.deliver(pdu.encode_deliver("0212345678", text, datetime.now(KST), reference=9))
        # What the manager does after a failure: reopen, sweep.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(phone.close(), 10)
        phone = make(driver, modem)
        await phone.open()
        deadline = time.monotonic() + RECOVERY_S
        while text not in seen and time.monotonic() < deadline:
            with contextlib.suppress(DriverError):
                await phone.sweep()
            seen += await drain(phone, 1.0)
    except Exception as exc:  # a cell must end in a verdict, never crash the matrix
        return f"{type(exc).__name__}: {exc}"
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(phone.close(), 10)
        await modem.close()
    if seen.count(text) != 1 or any(t != text for t in seen):
        return f"received {seen!r}"
    return ""


async def run(drivers: list[str], profiles: list[ModemProfile]) -> int:
    failures = 0
    with tempfile.TemporaryDirectory(prefix="hanjullo-matrix-") as tmp:
        for profile in profiles:
            for fault in ModemFault:
                for driver in drivers:
                    started = time.monotonic()
                    problem = await cell(profile, fault, driver, Path(tmp))
                    failures += bool(problem)
                    print(
                        f"{profile.value:<8} {fault.value:<11} {driver:<6} "
                        f"{'ok' if not problem else 'FAIL ' + problem[:120]} "
                        f"({time.monotonic() - started:.1f}s)",
                        flush=True,
                    )
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--driver", action="append", choices=["at", "gammu"])
    parser.add_argument("--profile", action="append", choices=[p.value for p in ModemProfile])
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    profiles = [ModemProfile(p) for p in args.profile] if args.profile else list(ModemProfile)
    failures = asyncio.run(run(args.driver or ["at", "gammu"], profiles))
    print(f"matrix_failures {failures}")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
