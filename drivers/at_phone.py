"""The `at` test-phone driver: pyserial (asyncio adapter), PDU mode, event-driven reads.

A ``+CMTI`` makes the driver read that one message at once (``AT+CMGR``); a
:meth:`sweep` (``AT+CMGL=4``, run by the caller no more often than every 30 s)
finds anything whose notification was lost. Parts are joined by the codec's
reassembler; a message whose parts never all arrive is surfaced as partial.
Nothing is deleted until the caller says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Awaitable, Callable

import serial_asyncio_fast
import structlog

from drivers import pdu
from drivers.at import ATError, ATProtocol, CommandTimeout, PortClosed, Reply
from drivers.base import (
    Identity,
    ModemHealth,
    Registration,
    SimState,
    TestPhoneDriver,
)
from drivers.errors import DriverError, PduError

log = structlog.get_logger("drivers.at_phone")

Opener = Callable[[str], Awaitable[tuple[asyncio.Transport, ATProtocol]]]

# Prepares a modem for receiving: no echo, numeric errors, PDU mode, SIM storage,
# +CMTI for every stored SMS-DELIVER, numeric operator names.
INIT_COMMANDS = (
    "ATE0",
    "AT+CMEE=1",
    "AT+CMGF=0",
    "AT+CNMI=2,1,0,0,0",
    "AT+COPS=3,2",
)
# SIM storage first; a modem without it (a Huawei stick keeps texts in "ME") gets the
# first memory its AT+CPMS=? offers.
PREFERRED_MEMORY = "SM"
# How often incomplete concatenated messages are checked for expiry.
EXPIRE_CHECK_S = 1.0
# +CMS ERROR 321, invalid memory index (3GPP TS 27.005 3.2.5): AT+CMGR of an empty slot, as
# after a +CMTI whose message a sweep already read and the daemon deleted.
INVALID_INDEX = 321

_CREG = {
    "0": Registration.NOT_REGISTERED,
    "1": Registration.HOME,
    "2": Registration.SEARCHING,
    "3": Registration.DENIED,
    "4": Registration.UNKNOWN,
    "5": Registration.ROAMING,
}
_CPIN = {
    "READY": SimState.READY,
    "SIM PIN": SimState.PIN_REQUIRED,
    "SIM PUK": SimState.PUK_REQUIRED,
}


async def open_serial(device: str) -> tuple[asyncio.Transport, ATProtocol]:
    loop = asyncio.get_running_loop()
    transport, protocol = await serial_asyncio_fast.create_serial_connection(
        loop, ATProtocol, device, baudrate=115200, exclusive=True
    )
    assert isinstance(protocol, ATProtocol)
    return transport, protocol


class ATPhone(TestPhoneDriver):
    def __init__(
        self,
        device: str,
        command_timeout_s: float = 2.0,
        partial_timeout_s: float = 120.0,
        opener: Opener = open_serial,
    ) -> None:
        super().__init__(partial_timeout_s)
        self.device = device
        self.command_timeout_s = command_timeout_s
        self.opener = opener
        self._transport: asyncio.Transport | None = None
        self._protocol: ATProtocol | None = None
        self._indices: asyncio.Queue[int] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None

    @property
    def is_open(self) -> bool:
        return self._protocol is not None and not self._protocol.lost.is_set()

    @property
    def protocol(self) -> ATProtocol:
        if self._protocol is None:
            raise PortClosed("port is not open")
        return self._protocol

    @property
    def consecutive_timeouts(self) -> int:
        return 0 if self._protocol is None else self._protocol.engine.consecutive_timeouts

    async def open(self) -> None:
        self._transport, self._protocol = await self.opener(self.device)
        # The adapter calls connection_made on the next loop iteration.
        async with asyncio.timeout(self.command_timeout_s):
            await self._protocol.connected.wait()
        self._protocol.engine.add_listener("+CMTI:", self._on_cmti)
        self._protocol.engine.add_listener("+CMT:", self._on_cmt)
        for command in INIT_COMMANDS[:3]:
            await self.command(command)
        await self._choose_memory()
        for command in INIT_COMMANDS[3:]:
            await self.command(command)
        self._reader = asyncio.create_task(self._read_notified(), name=f"at-read-{self.device}")

    async def _choose_memory(self) -> None:
        memory = PREFERRED_MEMORY
        try:
            await self.command(f'AT+CPMS="{memory}","{memory}","{memory}"', ("+CPMS:",))
            return
        except ATError:
            offered = (await self.command("AT+CPMS=?", ("+CPMS:",))).value("+CPMS:") or ""
        match = re.search(r'"([A-Z]{2})"', offered)
        if match is None:
            raise DriverError(f"the modem offers no message storage (AT+CPMS=? -> {offered!r})")
        memory = match.group(1)
        await self.command(f'AT+CPMS="{memory}","{memory}","{memory}"', ("+CPMS:",))
        log.info("message storage chosen", memory=memory, device=self.device)

    async def close(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        transport, self._transport = self._transport, None
        protocol = self._protocol
        if transport is not None:
            transport.close()
            if protocol is not None:
                # The adapter finishes closing in a task of its own; wait for it.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.command_timeout_s):
                        await protocol.lost.wait()
        self._protocol = None
        self.stored.clear()

    async def command(self, command: str, expect: tuple[str, ...] = ()) -> Reply:
        try:
            return await self.protocol.engine.command(command, self.command_timeout_s, expect)
        except CommandTimeout:
            self.last_timeout_at = time.monotonic()
            raise

    # ---- identity and health --------------------------------------------------------------
    async def identify(self) -> Identity:
        values = []
        for command in ("AT+CGMI", "AT+CGMM", "AT+CGSN", "AT+CIMI"):
            try:
                reply = await self.command(command)
                values.append(reply.lines[-1] if reply.lines else "")
            except ATError:
                values.append("")
        return Identity(*values)

    async def health(self) -> ModemHealth:
        try:
            cpin = (await self.command("AT+CPIN?", ("+CPIN:",))).value("+CPIN:") or ""
            sim = _CPIN.get(cpin, SimState.UNKNOWN)
        except ATError as exc:
            sim = SimState.ABSENT if exc.code in (10, 13) else SimState.UNKNOWN
        creg = (await self.command("AT+CREG?", ("+CREG:",))).value("+CREG:") or ""
        parts = creg.split(",")
        registration = _CREG.get(parts[1] if len(parts) > 1 else parts[0], Registration.UNKNOWN)
        # Numeric operator format every time: a modem reset forgets it.
        await self.command("AT+COPS=3,2")
        cops = (await self.command("AT+COPS?", ("+COPS:",))).value("+COPS:") or ""
        match = re.search(r'"([0-9]{5,6})"', cops)
        operator = match.group(1) if match else ""
        csq = (await self.command("AT+CSQ", ("+CSQ:",))).value("+CSQ:") or ""
        rssi = csq.split(",")[0]
        signal = int(rssi) if rssi.isdigit() and int(rssi) != 99 else None
        used = total = None
        if sim == SimState.READY:
            cpms = (await self.command("AT+CPMS?", ("+CPMS:",))).value("+CPMS:") or ""
            numbers = re.findall(r"(?<![A-Z\"])\b(\d+)\b", cpms)
            if len(numbers) >= 2:
                used, total = int(numbers[0]), int(numbers[1])
        return ModemHealth(sim, registration, operator, signal, used, total)

    # ---- receiving ------------------------------------------------------------------------
    def _on_cmti(self, line: str, _: str | None) -> None:
        match = re.search(r",\s*(\d+)", line)
        if match:
            self._indices.put_nowait(int(match.group(1)))

    def _on_cmt(self, _line: str, hex_pdu: str | None) -> None:
        """A text routed straight to us (CNMI <mt>=2): not stored, nothing to delete."""
        if hex_pdu is None:
            return
        try:
            part = pdu.decode(hex_pdu)
        except PduError as exc:
            log.warning("undecodable +CMT PDU dropped", error=str(exc))
            return
        if isinstance(part, pdu.Deliver):
            self.stored.add_direct(hex_pdu.upper(), part)

    async def _read_notified(self) -> None:
        while True:
            try:
                async with asyncio.timeout(EXPIRE_CHECK_S):
                    index = await self._indices.get()
            except TimeoutError:
                self.stored.expire()
                continue
            # Read even an index this driver holds: a slot is reused as soon as it is
            # deleted, and the +CMTI of the message stored there can be dispatched (in the
            # same read as AT+CMGD's OK, or before it) while the deleted one is still held.
            # What the read returns, not the index, says whether it is new.
            try:
                reply = await self.command(f"AT+CMGR={index}", ("+CMGR:",))
            except DriverError as exc:  # an ATError too
                if isinstance(exc, ATError) and exc.code == INVALID_INDEX:
                    log.debug("announced slot already read and deleted", index=index)
                else:
                    log.warning(
                        "read after +CMTI failed; the sweep will find it",
                        index=index,
                        error=str(exc),
                    )
                continue
            for header, hex_pdu in _pdu_lines(reply, "+CMGR:"):
                if self.stored.knows(index, hex_pdu):
                    continue  # already read (a sweep, or an earlier +CMTI for the index)
                if not self._trusted(index, header, hex_pdu):
                    continue
                self._take(index, hex_pdu, "cmti")

    def _trusted(self, index: int, header: str, hex_pdu: str) -> bool:
        """Whether a ``+CMGR`` reply can be this index's message.

        ``+CMGR`` does not repeat the index (3GPP TS 27.005 3.4.3), so the engine's
        resynchronisation is what binds a reply to its command; a reply whose declared
        length is not its PDU's, or whose PDU another index already holds, is left to
        the sweep, whose ``+CMGL`` lines name their index.
        """
        declared = header.rsplit(",", 1)[-1].strip()
        if not declared.isdigit() or int(declared) != _tpdu_length(hex_pdu):
            log.warning("read reply does not match its header; left to the sweep", index=index)
            return False
        other = self.stored.held_elsewhere(index, hex_pdu)
        if other is not None:
            log.warning(
                "read reply is another index's message; left to the sweep",
                index=index,
                holder=other,
            )
            return False
        return True

    async def sweep(self) -> int:
        reply = await self.command("AT+CMGL=4", ("+CMGL:",))
        found = 0
        for header, hex_pdu in _pdu_lines(reply, "+CMGL:"):
            first = header.split(",")[0].strip()
            if not first.isdigit():
                log.warning("listing line without an index skipped", header=header[:40])
                continue
            index = int(first)
            if self.stored.knows(index, hex_pdu):
                continue
            self._take(index, hex_pdu, "sweep")
            found += 1
        self.stored.expire()
        return found

    def _take(self, index: int, hex_pdu: str, via: str) -> None:
        try:
            part = pdu.decode(hex_pdu)
        except PduError as exc:
            log.warning("undecodable PDU", index=index, error=str(exc))
            self.stored.add_undecodable(index, hex_pdu, via, str(exc))
            return
        if not isinstance(part, pdu.Deliver):
            log.info("status report received", index=index)
            self.stored.add(index, hex_pdu, None, via)
            return
        self.stored.add(index, hex_pdu, part, via)

    async def delete(self, indices: tuple[int, ...]) -> None:
        for index in indices:
            await self.command(f"AT+CMGD={index}")
            self.stored.forget(index)


def _trim_padding(header: str, hex_pdu: str) -> str:
    """Drop the trailing ``FF`` octets some modems print past the declared length."""
    declared = header.rsplit(",", 1)[-1].strip()
    if not declared.isdigit():
        return hex_pdu
    extra = _tpdu_length(hex_pdu) - int(declared)
    if extra > 0 and hex_pdu.endswith("FF" * extra):
        return hex_pdu[: -2 * extra]
    return hex_pdu


def _tpdu_length(hex_pdu: str) -> int:
    """Octets after the SMSC address: what +CMGR/+CMGL declare as the length."""
    return len(hex_pdu) // 2 - int(hex_pdu[:2], 16) - 1


def _pdu_lines(reply: Reply, prefix: str) -> list[tuple[str, str]]:
    """(header after the prefix, hex PDU) pairs; noise lines between them are skipped."""
    pairs: list[tuple[str, str]] = []
    header: str | None = None
    for line in reply.lines:
        if line.startswith(prefix):
            header = line[len(prefix) :].strip()
        elif header is not None and re.fullmatch(r"[0-9A-Fa-f]+", line) and len(line) % 2 == 0:
            pairs.append((header, _trim_padding(header, line.upper())))
            header = None
    return pairs
