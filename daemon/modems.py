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
before they are deleted from the modem; a message that cannot be recorded or deleted
makes the modem ``degraded`` (with the reason) until it is, a failed delete by reopening
the port, whose first listing finds the message again.

The proof a verdict needs (`storage_read_at`): the moment of the latest listing of the
storage (``AT+CMGL``) whose every message has been recorded. A listing can be asked for
(`request_read`); the spam-test engine does so before it calls a carrier blocked. History
and proofs are on the monotonic clock, so a step of the system clock moves neither.

Besides the periodic sweep, the storage is listed when two health checks in a row count
more stored messages than the driver has read: a message whose ``+CMTI`` was lost waits
seconds for its receipt, not a sweep interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import time
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
from daemon.role import WriterState, while_writer
from daemon.runtime import Runtime
from daemon.stores import PG_ERRORS, PostgresKeeper
from daemon.supervisor import ComponentState, DependencyDown, Health
from drivers.at import ATError, CommandTimeout, PortClosed
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
# How long a listing waits for what it surfaced to be recorded before it proves nothing
# (health checks go on meanwhile; PostgreSQL being slow or down is the usual cause).
READ_PROOF_WAIT_S = 5.0
# Health checks in a row that must find the storage holding more than the driver has read
# before it is listed out of turn (a lost +CMTI; else the next sweep finds it): one check can
# fall between a message's storing and the read its +CMTI starts, two in a row cannot.
UNREAD_CHECKS_BEFORE_LISTING = 2
# How a SIM error that ended a session is reported (the health check says the same of an
# AT+CPIN? answer).
_SIM_PROBLEM = {
    SimState.PIN_REQUIRED: "SIM locked (pin-required)",
    SimState.PUK_REQUIRED: "SIM locked (puk-required)",
    SimState.ABSENT: "SIM not inserted",
    SimState.READY: "SIM error",
    SimState.UNKNOWN: "SIM error",
}


class ReceiptFault(Exception):
    """A received message could not be deleted from the modem after it was recorded:
    the session ends, and the reopened port's listing finds it again."""


class ModemState(StrEnum):
    ABSENT = "absent"
    OPENING = "opening"
    INITIALISING = "initialising"
    READY = "ready"
    DEGRADED = "degraded"
    HUNG = "hung"
    RESETTING = "resetting"
    MISCONFIGURED = "misconfigured"
    # Another daemon is the node's writer: this one leaves the port to it (`daemon/role.py`).
    PASSIVE = "passive"


@dataclass(frozen=True, slots=True)
class Transition:
    state: ModemState
    reason: str
    at: datetime  # wall clock, for people
    mono: float = 0.0  # monotonic clock, for "ready throughout" questions


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
        self,
        runtime: Runtime,
        modem: ModemConfig,
        postgres: PostgresKeeper | None = None,
        role: WriterState | None = None,
    ) -> None:
        self.runtime = runtime
        self.modem = modem
        self.postgres = postgres
        # The node's writer role: the port is opened only while this daemon holds it
        # (None: always, for a manager on its own).
        self.role = role
        self.name = f"modem:{modem.label}"
        self.status = ModemStatus()
        self.history: deque[Transition] = deque(maxlen=HISTORY)
        self.driver: TestPhoneDriver | None = None
        # Called with each newly recorded receipt's id (the spam-test engine wakes on it).
        self.receipt_listeners: list[Callable[[int], None]] = []
        # Called when a complete read of the storage is proven (`storage_read_at`).
        self.read_listeners: list[Callable[[], None]] = []
        self.monotonic: Callable[[], float] = time.monotonic
        # When this process first saw the modem ready (monotonic).
        self.first_ready_at: float | None = None
        # The latest listing of the storage whose every message is recorded (monotonic).
        self.storage_read_at: float | None = None
        self._health: Health | None = None
        self._failures = 0
        # Why receipts cannot be recorded or deleted now ("" when they can).
        self._receipt_problem = ""
        self._read_requested = asyncio.Event()
        self._progress = asyncio.Event()  # set each time a message is recorded and deleted
        # Messages surfaced by the driver, and those recorded (and deleted) since.
        self._surfaced = 0
        self._stored = 0
        # Health checks in a row whose storage count exceeded what the driver has read.
        self._unread_checks = 0

    # ---- state --------------------------------------------------------------------------
    def _set(self, state: ModemState, reason: str = "") -> None:
        if (state, reason) != (self.status.state, self.status.reason):
            now, mono = datetime.now(UTC), self.monotonic()
            self.status.state, self.status.reason, self.status.since = state, reason, now
            self.history.append(Transition(state, reason, now, mono))
            if state == ModemState.READY and self.first_ready_at is None:
                self.first_ready_at = mono
            log.info("modem state", modem=self.modem.label, state=state.value, reason=reason)
        if self._health is not None:
            if state == ModemState.READY:
                self._health.running()
            elif state in (ModemState.OPENING, ModemState.INITIALISING):
                self._health.set(ComponentState.STARTING, reason)
            elif state == ModemState.PASSIVE:
                self._health.running(reason)  # by design, not a fault
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

    def ready_throughout(self, start: float, end: float | None = None) -> bool:
        """True when the modem was ready for the whole of [start, end] (monotonic; end:
        now)."""
        state_at_start: ModemState | None = None
        for transition in self.history:
            if transition.mono <= start:
                state_at_start = transition.state
            elif (end is None or transition.mono <= end) and transition.state != ModemState.READY:
                return False
        if state_at_start is None:
            return False
        return state_at_start == ModemState.READY and (end is not None or self.ready)

    def watched_since(self, start: float) -> bool:
        """True when a message that reached the phone at any time since `start`
        (monotonic) would have been seen: the modem is ready now and has been since this
        process first saw it ready (or since `start`, if later), and a complete read of
        its storage has been proven (`storage_read_at`: listed, and everything listed
        recorded). While the daemon itself was down, messages wait in the modem's
        storage for that first read.
        """
        if self.first_ready_at is None or self.storage_read_at is None:
            return False
        timed_out = self.driver.last_timeout_at if self.driver is not None else None
        if timed_out is not None and timed_out >= start:
            return False  # a late or lost reply may have been a receipt's (issue 18)
        return self.ready_throughout(max(start, self.first_ready_at))

    def request_read(self) -> None:
        """List the storage at the next chance (not at the next sweep, which may be 30 s
        away); `storage_read_at` moves once what it held is recorded."""
        self._read_requested.set()

    # ---- main loop ----------------------------------------------------------------------
    async def run(self, health: Health) -> None:
        self._health = health
        self._set(self.status.state, self.status.reason)
        try:
            if self.role is None:
                await self._own()
            else:
                await while_writer(self.role, self._own, self._passive)
        finally:
            await self._close()

    def _passive(self, reason: str) -> None:
        self._set(ModemState.PASSIVE, reason)

    async def _own(self) -> None:
        """Open the port and serve it, forever (through every recovery)."""
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
        self._stored = 0  # a new driver: nothing of it surfaced yet
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
            await self._serve(driver, consumer)
        except ReceiptFault as exc:
            self._count_recovery("receipt_failed")
            self._failures += 1
            self._set(ModemState.DEGRADED, str(exc))
            await asyncio.sleep(min(phones.backoff_max_s, 0.5 * 2 ** min(self._failures, 5)))
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
            sim = exc.sim if isinstance(exc, ATError) else None
            if sim is not None:
                # A locked or missing SIM fails AT+CPMS or AT+CMGL before the health check
                # asks AT+CPIN?: the operator must act, whichever command noticed first.
                self._set(ModemState.MISCONFIGURED, f"{_SIM_PROBLEM[sim]} ({exc})")
            else:
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
                # Its failure, if it failed, was handled above (`ReceiptFault`).
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await consumer
            await self._close()

    def _count_recovery(self, reason: str) -> None:
        # reason: "port_lost", "hung", "driver_error" or "receipt_failed" (a closed set: a
        # metric label).
        self.runtime.metrics.modem_recoveries.labels(self.modem.label, reason).inc()

    async def _serve(self, driver: TestPhoneDriver, consumer: asyncio.Task[None]) -> None:
        """Health checks and sweeps until the driver fails or the receipt consumer ends
        (its failure is raised here, so the session ends with it)."""
        phones = self.runtime.config.phones
        loop = asyncio.get_running_loop()
        next_sweep = loop.time()  # sweep at once: catch what arrived while we were away
        while True:
            if consumer.done():
                failure = consumer.exception()
                if isinstance(failure, ReceiptFault):
                    raise failure
                raise ReceiptFault(f"receipts stopped: {failure!r}") from failure
            state = await self._check_health(driver)
            self._failures = 0
            unread = self._unread_checks >= UNREAD_CHECKS_BEFORE_LISTING
            if state != ModemState.MISCONFIGURED and (
                loop.time() >= next_sweep or self._read_requested.is_set() or unread
            ):
                self._read_requested.clear()
                self._unread_checks = 0
                found = await self._read_storage(driver, consumer)
                if unread and found:
                    log.warning(
                        "stored messages were never announced; found by the storage count",
                        modem=self.modem.label,
                        found=found,
                    )
                next_sweep = loop.time() + phones.sweep_interval_s
            elif state == ModemState.MISCONFIGURED:
                self._read_requested.clear()  # no proof from a misconfigured phone
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(phones.health_interval_s):
                    await self._read_requested.wait()

    async def _read_storage(self, driver: TestPhoneDriver, consumer: asyncio.Task[None]) -> int:
        """One listing of the storage; once every message surfaced so far is recorded,
        the listing's start is the proof of a complete read (`storage_read_at`). Returns
        how many stored messages the listing found that had not been read."""
        listed_at = self.monotonic()
        found = await driver.sweep()
        target = driver.stored.emitted
        deadline = listed_at + READ_PROOF_WAIT_S
        while self._stored < target and not consumer.done():
            self._progress.clear()
            left = deadline - self.monotonic()
            if left <= 0:
                return found  # not all recorded yet: no proof from this listing
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._progress.wait()
        if self._stored < target:
            return found
        if self._receipt_problem:
            # Everything the storage holds is recorded and deleted: receipts work again.
            self._receipt_problem = ""
            log.info("receipts recorded again", modem=self.modem.label)
        self.storage_read_at = listed_at
        for listener in self.read_listeners:
            listener()
        return found

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
        used = reading.storage_used
        self._unread_checks = self._unread_checks + 1 if used and used > driver.stored.held else 0
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
        reason = reading.not_ready_reason(self.modem.mcc_mnc) or self._receipt_problem
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
                async with asyncio.timeout(5):
                    await driver.close()

    # ---- receipts -----------------------------------------------------------------------
    async def _consume(self, driver: TestPhoneDriver) -> None:
        async for received in driver.received():
            await self._store(driver, received)
            self._stored += 1
            self._progress.set()

    def _receipt_trouble(self, problem: str) -> None:
        """Receipts cannot be recorded or deleted: the modem is not ready until they can."""
        self._receipt_problem = problem
        self._set(ModemState.DEGRADED, problem)

    async def _store(self, driver: TestPhoneDriver, received: Received) -> None:
        """Record durably, then delete from the modem. Retries while PostgreSQL is down
        (or refuses the row); the message stays on the modem meanwhile, so nothing is
        lost, and the modem is not ready until it is recorded. A failed delete ends the
        session (`ReceiptFault`): the reopened port lists the message again."""
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
                self._receipt_trouble(f"a received message is not recorded: {exc}")
                await asyncio.sleep(self.runtime.config.supervision.check_interval_s)
        try:
            await driver.delete(received.indices)
        except (DriverError, OSError) as exc:
            problem = f"receipt {recorded.id} not deleted from the modem: {exc}"
            self._receipt_trouble(problem)
            raise ReceiptFault(problem) from exc
        if self._receipt_problem:
            self._read_requested.set()  # a listing proves the storage is all recorded
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
            sender=received.message.sender if received.message else None,
            parts=len(received.indices),
            complete=received.message.complete if received.message else False,
            undecodable=received.error or None,
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
            # Seconds since the storage was last read completely (what `blocked` needs).
            "storage_read_s_ago": round(self.monotonic() - self.storage_read_at, 1)
            if self.storage_read_at is not None
            else None,
            "recoveries": s.recoveries,
        }
