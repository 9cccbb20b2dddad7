"""The `gammu` test-phone driver: python-gammu (the pip wheel) behind a worker thread.

python-gammu's calls block, and its StateMachine is not thread-safe, so exactly
one worker thread owns it; every call goes through :meth:`_call`, which runs it
on that thread and awaits the result without blocking the event loop. gammu
decodes each stored PDU itself; its fields (sender, time, coding, the raw UDH,
the text or 8-bit payload) become codec parts, so concatenation and WAP-push MMS
notifications are joined by the same reassembler as the `at` driver's. Incoming
``+CMTI`` notifications reach gammu's callback during ``ReadDevice``, which a
pump calls every :data:`PUMP_INTERVAL_S`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import os
import tempfile
import termios
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import gammu
import structlog

from drivers import pdu
from drivers.at import CommandTimeout, PortClosed
from drivers.base import (
    Identity,
    ModemHealth,
    Registration,
    SimState,
    TestPhoneDriver,
)
from drivers.errors import DriverError, PduError

log = structlog.get_logger("drivers.gammu_phone")

# How often gammu is given the chance to read URCs (its callback fires inside ReadDevice).
PUMP_INTERVAL_S = 0.1
# How long close() lets gammu's Terminate talk to a modem that still answers.
TERMINATE_TIMEOUT_FACTOR = 2
_T = TypeVar("_T")

_NETWORK_STATE = {
    "HomeNetwork": Registration.HOME,
    "RoamingNetwork": Registration.ROAMING,
    "RequestingNetwork": Registration.SEARCHING,
    "NoNetwork": Registration.NOT_REGISTERED,
    "RegistrationDenied": Registration.DENIED,
    "Unknown": Registration.UNKNOWN,
}
_CODING = {
    "Default_No_Compression": pdu.Encoding.GSM7,
    "Unicode_No_Compression": pdu.Encoding.UCS2,
    "8bit": pdu.Encoding.EIGHT_BIT,
}
_GONE = (
    "ERR_DEVICENOTEXIST",
    "ERR_DEVICEOPENERROR",
    "ERR_DEVICEREADERROR",
    "ERR_DEVICEWRITEERROR",
    "ERR_DEVICECHANGESPEEDERROR",
    "ERR_NOTCONNECTED",
    "ERR_DEVICEBUSY",
    "ERR_DEVICENODRIVER",
)


def _device_fds(device: str) -> set[int]:
    """This process's descriptors open on `device` (resolved: a stable symlink names a pty)."""
    target = os.path.realpath(device)
    found: set[int] = set()
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/self/fd/{name}") == target:
                    found.add(int(name))
    return found


def _break_descriptors(fds: set[int], target: str) -> int:
    """Swap each of gammu's tty descriptors for a broken pipe; how many were swapped.

    The tty (and gammu's exclusive lock on it) is released at once, and a worker stuck
    in a call to a hung modem fails its next read or write instead of waiting it out
    (a pipe whose reader is gone: writes get EPIPE, reads of a write end get EBADF).
    A descriptor that no longer names the tty (gammu closed it, the number was reused)
    is left alone.
    """
    swapped = 0
    reader, writer = os.pipe()
    os.close(reader)
    try:
        for fd in fds:
            try:
                if os.readlink(f"/proc/self/fd/{fd}") != target:
                    continue
            except OSError:
                continue
            # gammu set TIOCEXCL; the tty keeps it while anyone else holds it open.
            with contextlib.suppress(OSError):
                fcntl.ioctl(fd, termios.TIOCNXCL)
            os.dup2(writer, fd)
            swapped += 1
    finally:
        os.close(writer)
    return swapped


def _raw_pdu(sms: dict[str, Any]) -> str:
    """The message as a hex PDU (what a receipt keeps and what tells two reads of one
    location apart); "" when gammu cannot encode it."""
    try:
        raw = gammu.EncodePDU(sms, Layout="Deliver")
    except (gammu.GSMError, TypeError, ValueError):
        return ""
    return raw.hex().upper() if isinstance(raw, bytes) else str(raw)


def part_from_gammu(sms: dict[str, Any]) -> pdu.Deliver:
    """A codec part from one SMS as python-gammu decoded it."""
    coding = _CODING.get(str(sms.get("Coding")), pdu.Encoding.EIGHT_BIT)
    udh = sms.get("UDH") or {}
    raw_udh: bytes = udh.get("Text") or b""
    concat, ports = (None, None)
    if raw_udh:
        concat, ports = pdu._parse_udh(raw_udh[1 : 1 + raw_udh[0]])
    text = sms.get("Text")
    if isinstance(text, bytes):
        data, decoded = text, ""
    else:
        decoded = (text or "").rstrip("\x00") if coding == pdu.Encoding.GSM7 else (text or "")
        data = decoded.encode("utf-16-be") if coding == pdu.Encoding.UCS2 else b""
    when = sms.get("DateTime")
    if not isinstance(when, datetime):
        when = datetime.now(UTC)
    elif when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    smsc = (sms.get("SMSC") or {}).get("Number") or ""
    return pdu.Deliver(
        smsc, str(sms.get("Number") or ""), when, coding, decoded, data, concat, ports
    )


class GammuPhone(TestPhoneDriver):
    def __init__(
        self,
        device: str,
        command_timeout_s: float = 2.0,
        partial_timeout_s: float = 120.0,
        connect_timeout_s: float = 30.0,
        state_machine: Callable[[], Any] | None = None,
    ) -> None:
        super().__init__(partial_timeout_s)
        self.device = device
        self.command_timeout_s = command_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.state_machine = state_machine
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        # A call that timed out: while it still runs, the worker is stuck in gammu and
        # nothing more is queued behind it.
        self._running: concurrent.futures.Future[Any] | None = None
        self._fds: set[int] = set()
        self._tty = ""
        self.abandoned_workers = 0
        self._sm: Any = None
        self._locations: asyncio.Queue[int] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._lost = False
        self.consecutive_timeouts = 0

    @property
    def is_open(self) -> bool:
        return self._sm is not None and not self._lost

    async def _call(
        self, fn: Callable[..., _T], *args: Any, limit_s: float | None = None, **kwargs: Any
    ) -> _T:
        if self._executor is None:
            raise PortClosed("gammu driver is not open")
        if self._running is not None and not self._running.done():
            self.consecutive_timeouts += 1
            raise CommandTimeout("gammu is still in a call that timed out; the modem is hung")
        running = self._executor.submit(fn, *args, **kwargs)
        outcome = asyncio.wrap_future(running)
        # A call given up on still ends (in error, once aborted): nobody awaits it then.
        outcome.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            async with asyncio.timeout(limit_s or self.command_timeout_s * 3):
                result = await asyncio.shield(outcome)
        except TimeoutError as exc:
            self.consecutive_timeouts += 1
            self._running = running  # stuck in gammu: nothing is queued behind it
            self.last_timeout_at = time.monotonic()
            raise CommandTimeout(f"gammu {getattr(fn, '__name__', fn)} timed out") from exc
        except gammu.GSMError as exc:
            name = type(exc).__name__
            if name in _GONE:
                self._lost = True
                raise PortClosed(f"gammu: {name}") from exc
            if name == "ERR_TIMEOUT":
                self.consecutive_timeouts += 1
                self.last_timeout_at = time.monotonic()
                raise CommandTimeout(f"gammu: {name}") from exc
            raise DriverError(f"gammu: {name}: {exc}") from exc
        self.consecutive_timeouts = 0
        return result

    async def open(self) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="gammu")
        self._lost = False
        loop = asyncio.get_running_loop()

        def connect() -> Any:
            # ReadConfig, not SetConfig: only a config read from a file gets gammu's default
            # CNMI parameters, without which it refuses incoming-SMS notifications.
            with tempfile.TemporaryDirectory(prefix="hanjullo-gammu-") as tmp:
                rc = Path(tmp) / "gammurc"
                rc.write_text(f"[gammu]\ndevice = {self.device}\nconnection = at\n")
                sm = (self.state_machine or gammu.StateMachine)()
                sm.ReadConfig(Filename=str(rc))
            before = _device_fds(self.device)
            self._tty = os.path.realpath(self.device)
            try:
                sm.Init()
            finally:
                # What Init opened on the tty is gammu's: close() may have to break it.
                self._fds = _device_fds(self.device) - before
            return sm

        self._sm = await self._call(connect, limit_s=self.connect_timeout_s)

        def on_incoming(_sm: Any, kind: str, data: Any) -> None:
            # Runs on the worker thread, inside ReadDevice.
            if kind == "SMS" and isinstance(data, dict) and data.get("Location") is not None:
                loop.call_soon_threadsafe(self._locations.put_nowait, int(data["Location"]))

        await self._call(self._sm.SetIncomingCallback, on_incoming)
        with contextlib.suppress(DriverError):
            await self._call(self._sm.SetIncomingSMS, True)
        self._tasks = [
            asyncio.create_task(self._pump(), name=f"gammu-pump-{self.device}"),
            asyncio.create_task(self._read_notified(), name=f"gammu-read-{self.device}"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        sm, self._sm = self._sm, None
        executor, self._executor = self._executor, None
        running, self._running = self._running, None
        fds, self._fds = self._fds, set()
        if executor is not None:
            stuck = running is not None and not running.done()
            if stuck:
                # Terminate would only queue behind the stuck call: release the tty now
                # and abort the call (gammu's Abort is the one thread-safe entry point);
                # the old worker then ends with it.
                _break_descriptors(fds, self._tty)
                if sm is not None:
                    with contextlib.suppress(gammu.GSMError):
                        sm.Abort()
            terminate = executor.submit(sm.Terminate) if sm is not None else None
            if terminate is not None:
                # After an abort both calls fail at once; a modem that answers is let go.
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(self.command_timeout_s * TERMINATE_TIMEOUT_FACTOR):
                        await asyncio.shield(asyncio.wrap_future(terminate))
                if not terminate.done() and not stuck:
                    _break_descriptors(fds, self._tty)  # the modem hung during Terminate
                    with contextlib.suppress(gammu.GSMError):
                        sm.Abort()
                    stuck = True
            if stuck:
                self.abandoned_workers += 1
                log.warning("gammu worker abandoned; its tty was released", device=self.device)
            # The worker thread ends once its last call returns; a new one serves open().
            executor.shutdown(wait=False, cancel_futures=False)
        self.stored.clear()

    async def _pump(self) -> None:
        while True:
            try:
                await self._call(self._sm.ReadDevice)
            except PortClosed:
                log.warning("gammu lost the device", device=self.device)
                return
            except DriverError:
                pass
            await asyncio.sleep(PUMP_INTERVAL_S)

    # ---- identity and health --------------------------------------------------------------
    async def identify(self) -> Identity:
        sm = self._sm
        return Identity(
            await self._call(sm.GetManufacturer),
            str((await self._call(sm.GetModel))[1]),
            await self._call(sm.GetIMEI),
            await self._call(sm.GetSIMIMSI),
        )

    async def _optional(self, fn: Callable[..., _T]) -> _T | None:
        """A reading the modem may not support: None then. A lost port or a timeout
        still propagates (they say something about the modem, not the reading)."""
        try:
            return await self._call(fn)
        except (PortClosed, CommandTimeout):
            raise
        except DriverError:
            return None

    async def health(self) -> ModemHealth:
        sm = self._sm
        sim = SimState.UNKNOWN
        try:
            security = await self._call(sm.GetSecurityStatus)
            code = str(security or "").upper()
            if security is None:
                sim = SimState.READY
            elif code.startswith("PIN"):
                sim = SimState.PIN_REQUIRED
            elif code.startswith("PUK"):
                sim = SimState.PUK_REQUIRED
        except (PortClosed, CommandTimeout):
            raise
        except DriverError:
            pass
        info = await self._optional(sm.GetNetworkInfo) or {}
        registration = _NETWORK_STATE.get(info.get("State", "Unknown"), Registration.UNKNOWN)
        operator = str(info.get("NetworkCode", "")).replace(" ", "")
        quality = await self._optional(sm.GetSignalQuality) or {}
        strength = quality.get("SignalPercent", -1)
        signal = None if strength is None or strength < 0 else round(strength * 31 / 100)
        used = total = None
        if sim == SimState.READY:
            status = await self._optional(sm.GetSMSStatus) or {}
            used, total = status.get("SIMUsed"), status.get("SIMSize")
        return ModemHealth(sim, registration, operator, signal, used, total)

    # ---- receiving ------------------------------------------------------------------------
    async def _read_notified(self) -> None:
        while True:
            try:
                async with asyncio.timeout(1.0):
                    location = await self._locations.get()
            except TimeoutError:
                self.stored.expire()
                continue
            # Read even a location this driver holds: it is reused as soon as it is
            # deleted, and the callback for the message stored there can fire inside
            # DeleteSMS, before the deleted one is forgotten. What the read returns, not
            # the location, says whether it is new.
            try:
                messages = await self._call(self._sm.GetSMS, 0, location)
            except PortClosed:
                return
            except DriverError as exc:
                if "EMPTY" in str(exc):
                    log.debug("announced location already read and deleted", location=location)
                else:
                    log.warning(
                        "read after +CMTI failed; the sweep will find it",
                        location=location,
                        error=str(exc),
                    )
                continue
            for sms in messages:
                found_at = int(sms.get("Location", location))
                hex_pdu = _raw_pdu(sms)
                if self.stored.knows(found_at, hex_pdu):
                    continue  # already read (a sweep, or an earlier notification)
                self._take(found_at, sms, hex_pdu, "cmti")

    async def sweep(self) -> int:
        found = 0
        start = True
        location = 0
        while True:
            try:
                if start:
                    batch = await self._call(self._sm.GetNextSMS, Folder=0, Start=True)
                else:
                    batch = await self._call(self._sm.GetNextSMS, Folder=0, Location=location)
            except DriverError as exc:
                if "EMPTY" in str(exc):
                    break
                raise
            start = False
            for sms in batch:
                location = int(sms["Location"])
                hex_pdu = _raw_pdu(sms)
                if not self.stored.knows(location, hex_pdu):
                    self._take(location, sms, hex_pdu, "sweep")
                    found += 1
        self.stored.expire()
        return found

    def _take(self, location: int, sms: dict[str, Any], hex_pdu: str, via: str) -> None:
        try:
            part: pdu.Deliver | None = part_from_gammu(sms)
        except (PduError, KeyError, TypeError, IndexError) as exc:
            log.warning("gammu message not understood", location=location, error=str(exc))
            self.stored.add_undecodable(location, hex_pdu, via, str(exc))
            return
        self.stored.add(location, hex_pdu, part, via)

    async def delete(self, indices: tuple[int, ...]) -> None:
        for location in indices:
            await self._call(self._sm.DeleteSMS, 0, location)
            self.stored.forget(location)
