"""One manager per test phone: is its modem present and answering.

This manager opens the configured device exclusively and checks that the modem
answers ``AT``; its state (absent, opening, ready, hung) and the reason are what
`/v1/status` shows. While the device is absent its path is checked every
``phones.absent_check_interval_s`` so a replug is seen at once. The component
is ``running`` only while the modem is ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import serial
import structlog

from config.logs import mask_phones
from config.model import ModemConfig
from daemon.runtime import Runtime
from daemon.supervisor import Health

log = structlog.get_logger("modems")


class ModemState(StrEnum):
    ABSENT = "absent"
    OPENING = "opening"
    READY = "ready"
    HUNG = "hung"


@dataclass(frozen=True, slots=True)
class ModemStatus:
    name: str
    carrier: str
    phone: str
    device: str
    driver: str
    state: ModemState
    reason: str
    since: datetime

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "carrier": self.carrier,
            "phone": mask_phones(self.phone),
            "device": self.device,
            "driver": self.driver,
            "state": self.state.value,
            "reason": self.reason,
            "since": self.since.isoformat(),
        }


def _probe(port: serial.Serial, timeout_s: float) -> bool:
    """Send AT and wait for OK (blocking; runs in a worker thread)."""
    port.reset_input_buffer()
    port.write(b"AT\r")
    deadline = time.monotonic() + timeout_s
    seen = b""
    while time.monotonic() < deadline:
        chunk = port.read(256)
        seen = (seen + chunk)[-512:]
        if b"\r\nOK\r\n" in seen or seen.endswith(b"OK\r\n"):
            return True
    return False


class ModemManager:
    def __init__(self, runtime: Runtime, modem: ModemConfig) -> None:
        self.runtime = runtime
        self.modem = modem
        self.name = f"modem:{modem.label}"
        self.status = self._status(ModemState.ABSENT, "not opened yet")
        self._port: serial.Serial | None = None

    def _status(self, state: ModemState, reason: str) -> ModemStatus:
        m = self.modem
        return ModemStatus(
            m.label,
            m.carrier.value,
            m.phone,
            m.device,
            m.driver.value,
            state,
            reason,
            datetime.now(UTC),
        )

    def _set(self, health: Health, state: ModemState, reason: str) -> None:
        if (state, reason) != (self.status.state, self.status.reason):
            log.info("modem state", modem=self.modem.label, state=state.value, reason=reason)
            self.status = self._status(state, reason)
        if state == ModemState.READY:
            health.running()
        else:
            health.degraded(f"modem {state.value}: {reason}")

    async def run(self, health: Health) -> None:
        try:
            while True:
                await self._check(health)
                phones = self.runtime.config.phones
                wait = (
                    phones.absent_check_interval_s
                    if self.status.state == ModemState.ABSENT
                    else phones.health_interval_s
                )
                await asyncio.sleep(wait)
        finally:
            await self._close()

    async def _check(self, health: Health) -> None:
        phones = self.runtime.config.phones
        device = self.modem.device
        # One stat of a device node: cheap enough for the event loop.
        if not os.path.exists(device):  # noqa: ASYNC240
            await self._close()
            self._set(health, ModemState.ABSENT, f"device {device} not present")
            return
        if self._port is None:
            self._set(health, ModemState.OPENING, f"opening {device}")
            try:
                self._port = await asyncio.to_thread(
                    serial.Serial, device, 115200, timeout=0.1, exclusive=True
                )
            except (OSError, serial.SerialException) as exc:
                self._set(health, ModemState.ABSENT, f"cannot open {device}: {exc}")
                return
        try:
            answered = await asyncio.to_thread(_probe, self._port, phones.command_timeout_s)
        except (OSError, serial.SerialException) as exc:
            await self._close()
            self._set(health, ModemState.ABSENT, f"{device} failed: {exc}")
            return
        if answered:
            self._set(health, ModemState.READY, "")
        else:
            self._set(
                health, ModemState.HUNG, f"no answer to AT within {phones.command_timeout_s}s"
            )

    async def _close(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(port.close)
