"""One manager per test phone: the modem's state machine, its recovery, its receipts.

States: absent, opening, initialising, ready, degraded, hung, resetting,
misconfigured. Only ``ready`` means a text sent to this phone now can be seen;
storage full, no registration and no signal are ``degraded`` (with the reason),
a SIM that is locked or registered on an operator not in ``mcc_mnc`` is
``misconfigured`` (a SIM swapped between two modems would corrupt every
verdict). Every transition is logged and kept, so the spam-test engine can ask
whether the phone was ready throughout an interval.

Recovery escalates with capped backoff: reopen the port, then reset the modem
(``AT+CFUN=1,1``), then wait for USB re-enumeration; the device is re-resolved
from its stable identity each time, and while it is absent its path is checked
every ``phones.absent_check_interval_s``. Receipts are recorded in PostgreSQL
before they are deleted from the modem.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import structlog

from config.logs import mask_phones
from config.model import ModemConfig, ModemDriver
from daemon import receipts
from daemon.runtime import Runtime
from daemon.stores import PG_ERRORS, PostgresKeeper
from daemon.supervisor import ComponentState, DependencyDown, Health
from drivers.at import CommandTimeout, PortClosed
from drivers.at_phone import ATPhone
from drivers.base import ModemHealth, Received, SimState, TestPhoneDriver
from drivers.errors import DriverError
from drivers.gammu_phone import GammuPhone

log = structlog.get_logger("modems")

# Transitions remembered for "was it ready throughout?" questions.
HISTORY = 500
# Reopen attempts before a reset, and resets before waiting for re-enumeration.
REOPENS_BEFORE_RESET = 1
RESETS_BEFORE_REPLUG_WAIT = 1
# Seconds after the first sweep before its messages count as recorded.
SWEEP_SETTLE_S = 2.0


class ModemState(StrEnum):
    ABSENT = "absent"
    OPENING = "opening"
    INITIALISING = "initialising"
    READY = "ready"
    DEGRADED = "degraded"
    HUNG = "hung"
    RESETTING = "resetting"
    MISCONFIGURED = "misconfigured"


@dataclass(frozen=True, slots=True)
class Transition:
    state: ModemState
    reason: str
    at: datetime


@dataclass(slots=True)
class ModemStatus:
    state: ModemState = ModemState.ABSENT
    reason: str = "not opened yet"
    since: datetime = field(default_factory=lambda: datetime.now(UTC))
    resolved: str = ""
    identity: dict[str, str] = field(default_factory=dict)
    health: ModemHealth | None = None
    receipts: int = 0
    last_receipt_at: datetime | None = None
    recoveries: int = 0


def resolve_device(device: str) -> str | None:
    """The device node behind a stable identity: a path (e.g. a /dev/serial/by-id link)
    or ``usb-serial:<serial number>``. None while it is absent."""
    if device.startswith("usb-serial:"):
        serial_number = device.split(":", 1)[1]
        matches = sorted(glob.glob(f"/dev/serial/by-id/*{glob.escape(serial_number)}*"))
        return os.path.realpath(matches[0]) if matches else None
    # One stat of a device node: cheap enough to do on the event loop.
    return os.path.realpath(device) if os.path.exists(device) else None


def make_driver(modem: ModemConfig, runtime: Runtime, device: str) -> TestPhoneDriver:
    phones = runtime.config.phones
    if modem.driver == ModemDriver.GAMMU:
        return GammuPhone(device, phones.command_timeout_s, phones.partial_timeout_s)
    return ATPhone(device, phones.command_timeout_s, phones.partial_timeout_s)


class ModemManager:
    def __init__(
        self, runtime: Runtime, modem: ModemConfig, postgres: PostgresKeeper | None = None
    ) -> None:
        self.runtime = runtime
        self.modem = modem
        self.postgres = postgres
        self.name = f"modem:{modem.label}"
        self.status = ModemStatus()
        self.history: deque[Transition] = deque(maxlen=HISTORY)
        self.driver: TestPhoneDriver | None = None
        # Called with each newly recorded receipt's id (the spam-test engine wakes on it).
        self.receipt_listeners: list[Callable[[int], None]] = []
        # When this process first saw the modem ready, and when it first read its storage.
        self.first_ready_at: datetime | None = None
        self.first_sweep_at: datetime | None = None
        self._health: Health | None = None
        self._failures = 0

    # ---- state --------------------------------------------------------------------------
    def _set(self, state: ModemState, reason: str = "") -> None:
        if (state, reason) != (self.status.state, self.status.reason):
            now = datetime.now(UTC)
            self.status.state, self.status.reason, self.status.since = state, reason, now
            self.history.append(Transition(state, reason, now))
            if state == ModemState.READY and self.first_ready_at is None:
                self.first_ready_at = now
            log.info("modem state", modem=self.modem.label, state=state.value, reason=reason)
        if self._health is not None:
            if state == ModemState.READY:
                self._health.running()
            elif state in (ModemState.OPENING, ModemState.INITIALISING):
                self._health.set(ComponentState.STARTING, reason)
            else:
                self._health.degraded(f"{state.value}" + (f": {reason}" if reason else ""))

    @property
    def settled(self) -> bool:
        """False until the first open attempt ended one way or the other."""
        return any(
            t.state not in (ModemState.OPENING, ModemState.INITIALISING) for t in self.history
        )

    @property
    def ready(self) -> bool:
        return self.status.state == ModemState.READY

    def ready_throughout(self, start: datetime, end: datetime | None = None) -> bool:
        """True when the modem was ready for the whole of [start, end] (end: now)."""
        state_at_start: ModemState | None = None
        for transition in self.history:
            if transition.at <= start:
                state_at_start = transition.state
            elif (end is None or transition.at <= end) and transition.state != ModemState.READY:
                return False
        if state_at_start is None:
            return False
        return state_at_start == ModemState.READY and (end is not None or self.ready)

    def watched_since(self, start: datetime) -> bool:
        """True when a message that reached the phone at any time since `start` would have
        been seen: the modem is ready now and has been since this process first saw it
        ready (or since `start`, if later), and its storage has been read once. While the
        daemon itself was down, messages wait in the modem's storage for the first sweep.
        """
        if self.first_ready_at is None or self.first_sweep_at is None:
            return False
        if (datetime.now(UTC) - self.first_sweep_at).total_seconds() < SWEEP_SETTLE_S:
            return False  # what the first sweep surfaced may still be being recorded
        timed_out = self.driver.last_timeout_at if self.driver is not None else None
        if timed_out is not None and timed_out >= start:
            return False  # a late or lost reply may have been a receipt's (issue 18)
        return self.ready_throughout(max(start, self.first_ready_at))

    # ---- main loop ----------------------------------------------------------------------
    async def run(self, health: Health) -> None:
        self._health = health
        self._set(self.status.state, self.status.reason)
        try:
            while True:
                device = resolve_device(self.modem.device)
                if device is None:
                    await self._close()
                    self._set(ModemState.ABSENT, f"device {self.modem.device} not present")
                    await asyncio.sleep(self.runtime.config.phones.absent_check_interval_s)
                    continue
                self.status.resolved = device
                await self._session(device)
        finally:
            await self._close()

    async def _session(self, device: str) -> None:
        """Open the modem and serve it until it fails; then decide how to recover."""
        phones = self.runtime.config.phones
        self._set(ModemState.OPENING, f"opening {device}")
        driver = make_driver(self.modem, self.runtime, self.modem.device)
        self.driver = driver
        consumer: asyncio.Task[None] | None = None
        try:
            await driver.open()
            self._set(ModemState.INITIALISING, "identifying")
            identity = await driver.identify()
            self.status.identity = {
                "manufacturer": identity.manufacturer,
                "model": identity.model,
                "imei": identity.imei,
                "imsi": identity.imsi[:5] + "*" * max(0, len(identity.imsi) - 5),
            }
            consumer = asyncio.create_task(self._consume(driver), name=f"{self.name}-receipts")
            await self._serve(driver)
        except PortClosed as exc:
            self._count_recovery("port_lost")
            self._set(ModemState.ABSENT, f"port lost: {exc}")
        except CommandTimeout as exc:
            self._count_recovery("hung")
            self._failures += 1
            count = getattr(driver, "consecutive_timeouts", 1)
            self._set(ModemState.HUNG, f"no answer to {count} consecutive commands ({exc})")
            await self._recover(driver)
        except (OSError, DriverError) as exc:
            self._count_recovery("driver_error")
            self._failures += 1
            self._set(
                ModemState.ABSENT
                if resolve_device(self.modem.device) is None
                else ModemState.DEGRADED,
                f"{type(exc).__name__}: {exc}",
            )
            await asyncio.sleep(min(phones.backoff_max_s, 0.5 * 2 ** min(self._failures, 5)))
        finally:
            if consumer is not None:
                consumer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await consumer
            await self._close()

    def _count_recovery(self, reason: str) -> None:
        # reason: "port_lost", "hung" or "driver_error" (a closed set: a metric label).
        self.runtime.metrics.modem_recoveries.labels(self.modem.label, reason).inc()

    async def _serve(self, driver: TestPhoneDriver) -> None:
        phones = self.runtime.config.phones
        loop = asyncio.get_running_loop()
        next_sweep = loop.time()  # sweep at once: catch what arrived while we were away
        while True:
            state = await self._check_health(driver)
            self._failures = 0
            if state != ModemState.MISCONFIGURED and loop.time() >= next_sweep:
                await driver.sweep()
                if self.first_sweep_at is None:
                    self.first_sweep_at = datetime.now(UTC)
                next_sweep = loop.time() + phones.sweep_interval_s
            await asyncio.sleep(phones.health_interval_s)

    async def _check_health(self, driver: TestPhoneDriver) -> ModemState:
        hang_after = self.runtime.config.phones.hang_after_timeouts
        try:
            reading = await driver.health()
        except CommandTimeout:
            timeouts = getattr(driver, "consecutive_timeouts", hang_after)
            if timeouts >= hang_after:
                raise
            self._set(ModemState.DEGRADED, f"{timeouts} command timeout(s)")
            return ModemState.DEGRADED
        self.status.health = reading
        if reading.sim in (SimState.PIN_REQUIRED, SimState.PUK_REQUIRED):
            self._set(ModemState.MISCONFIGURED, f"SIM locked ({reading.sim.value})")
            return ModemState.MISCONFIGURED
        if reading.operator and reading.operator not in self.modem.mcc_mnc:
            self._set(
                ModemState.MISCONFIGURED,
                f"registered on {reading.operator}, expected "
                f"{'/'.join(self.modem.mcc_mnc)} ({self.modem.carrier.value})",
            )
            return ModemState.MISCONFIGURED
        reason = reading.not_ready_reason(self.modem.mcc_mnc)
        if reason:
            self._set(ModemState.DEGRADED, reason)
            return ModemState.DEGRADED
        self._set(ModemState.READY)
        return ModemState.READY

    async def _recover(self, driver: TestPhoneDriver) -> None:
        """Escalate: reopen, then reset the modem, then wait for re-enumeration."""
        self.status.recoveries += 1
        phones = self.runtime.config.phones
        attempt = self._failures
        if attempt <= REOPENS_BEFORE_RESET:
            return  # the main loop reopens the port
        if attempt <= REOPENS_BEFORE_RESET + RESETS_BEFORE_REPLUG_WAIT and isinstance(
            driver, ATPhone
        ):
            self._set(ModemState.RESETTING, "AT+CFUN=1,1")
            with contextlib.suppress(DriverError, OSError):
                await driver.command("AT+CFUN=1,1")
            return
        wait = min(phones.backoff_max_s, 2 ** min(attempt, 5))
        self._set(ModemState.HUNG, f"waiting {wait:.0f}s for the modem to re-enumerate")
        await asyncio.sleep(wait)

    async def _close(self) -> None:
        driver, self.driver = self.driver, None
        if driver is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(driver.close(), 5)

    # ---- receipts -----------------------------------------------------------------------
    async def _consume(self, driver: TestPhoneDriver) -> None:
        async for received in driver.received():
            await self._store(driver, received)

    async def _store(self, driver: TestPhoneDriver, received: Received) -> None:
        """Record durably, then delete from the modem. Retries while PostgreSQL is down;
        the message stays on the modem meanwhile, so nothing is lost."""
        while True:
            try:
                if self.postgres is None:
                    raise DependencyDown("no postgres configured")
                pool = self.postgres.require()
                recorded = await receipts.record(
                    pool, self.runtime.config.node.id, self.modem, received
                )
                break
            except (DependencyDown, *PG_ERRORS) as exc:
                log.warning(
                    "receipt not recorded yet; keeping it on the modem",
                    modem=self.modem.label,
                    error=str(exc),
                )
                await asyncio.sleep(self.runtime.config.supervision.check_interval_s)
        await driver.delete(received.indices)
        with contextlib.suppress(*PG_ERRORS, DependencyDown):
            assert self.postgres is not None
            await receipts.mark_deleted(self.postgres.require(), recorded.id)
        self.status.receipts += 1
        self.runtime.metrics.receipts.labels(self.modem.label, self.modem.carrier.value).inc()
        self.status.last_receipt_at = datetime.now(UTC)
        for listener in self.receipt_listeners:
            listener(recorded.id)
        log.info(
            "receipt recorded",
            modem=self.modem.label,
            receipt=recorded.id,
            new=recorded.new,
            via=received.via,
            sender=received.message.sender,
            parts=len(received.indices),
            complete=received.message.complete,
        )

    # ---- status -------------------------------------------------------------------------
    def as_json(self) -> dict[str, Any]:
        m, s = self.modem, self.status
        health = s.health
        return {
            "name": m.label,
            "carrier": m.carrier.value,
            "phone": mask_phones(m.phone),
            "device": m.device,
            "resolved": s.resolved or None,
            "driver": m.driver.value,
            "state": s.state.value,
            "reason": s.reason,
            "since": s.since.isoformat(),
            "identity": s.identity or None,
            "sim": health.sim.value if health else None,
            "registration": health.registration.value if health else None,
            "operator": health.operator if health else None,
            "signal": health.signal if health else None,
            "storage": f"{health.storage_used}/{health.storage_total}"
            if health and health.storage_total is not None
            else None,
            "receipts": s.receipts,
            "last_receipt_at": s.last_receipt_at.isoformat() if s.last_receipt_at else None,
            "recoveries": s.recoveries,
        }
