"""The AT command layer: line splitting, one command in flight, URC dispatch.

Layering (bottom up): :class:`LineSplitter` turns bytes into lines with a
bounded buffer and resynchronises after noise; :class:`ATEngine` matches lines
to the one command in flight (its waiter is registered before the command is
written, each command has its own timeout) and hands unsolicited result codes
to the listeners registered for their prefix. Whether a line is a reply or a
notification is decided by its prefix and the command in flight, never by
timing. After a command times out its reply may still come: the engine then
resynchronises (:meth:`ATEngine._resync`) before it writes anything else, so a
late reply is drained and can never be taken for the next command's.
Every wait here is an ``asyncio.timeout`` block, never ``asyncio.wait_for``: on Python
3.11 ``wait_for`` returns a result that is ready in the same loop turn as a cancel and
drops the cancel, so the daemon's receipt loop would go on and a modem's close() would
wait for it forever.
:class:`ATProtocol` connects the engine to an asyncio transport
(serial_asyncio_fast in production, an in-process pair in tests).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from drivers.base import SimState
from drivers.errors import DriverError

log = structlog.get_logger("drivers.at")

# A line longer than this is noise: it is dropped and the splitter resynchronises.
MAX_LINE_BYTES = 1024
# Final result codes that end a command.
_FINAL_OK = frozenset({"OK"})
_FINAL_ERROR = re.compile(r"^(ERROR|NO CARRIER|\+CM[ES] ERROR: ?.*)$")
# Two-line URCs: the PDU follows on the next line.
_PDU_URCS = ("+CMT:", "+CDS:")
# Prefixes that are unsolicited unless the command in flight expects them.
URC_PREFIXES = (
    "+CMTI:",
    "+CMT:",
    "+CDS:",
    "+CDSI:",
    "RING",
    "^BOOT",
    "^SYSSTART",
    "RDY",
    "+CFUN:",
    "+CPIN:",
    "^MODE",
    "^RSSI",
    "+CREG:",
    "^SIMST",
    # Boot and status codes of the modem families in docs/test-phones.md.
    "^SRVST",
    "^SYSINFO",
    "+QIND:",
    "SMS Ready",
    "SMS DONE",
    "PB DONE",
    "Call Ready",
)
_HEX_LINE = re.compile(r"^[0-9A-Fa-f]+$")
# The resynchronisation marker: S7 (wait for carrier, V.250 6.3.4) is set to a fresh value
# and read back in one command line; only that value followed by OK ends the drain. S7
# matters for data calls only, which a test phone never makes.
MARKER_REGISTER = 7
MARKER_VALUES = 255  # S7 accepts 1-255 on every modem family we know
# A resync may wait this many command timeouts: a slow modem first finishes what it was doing.
RESYNC_TIMEOUT_FACTOR = 3


# SIM errors by code: SIM not inserted, PIN required, PUK required (PIN2/PUK2 and PH-SIM
# are locks too); "SIM busy" and the like are transient and stay out.
_CME_SIM = {
    10: SimState.ABSENT,
    11: SimState.PIN_REQUIRED,
    12: SimState.PUK_REQUIRED,
    17: SimState.PIN_REQUIRED,
    18: SimState.PUK_REQUIRED,
}
_CMS_SIM = {
    310: SimState.ABSENT,
    311: SimState.PIN_REQUIRED,
    312: SimState.PIN_REQUIRED,
    316: SimState.PUK_REQUIRED,
    317: SimState.PIN_REQUIRED,
    318: SimState.PUK_REQUIRED,
}


class ATError(DriverError):
    """The modem answered a command with an error."""

    def __init__(self, command: str, final: str) -> None:
        self.command = command
        self.final = final
        match = re.search(r"ERROR: ?(\d+)", final)
        self.code = int(match.group(1)) if match else None
        super().__init__(f"{command} -> {final}")

    @property
    def sim(self) -> SimState | None:
        """What the error says of the SIM, if it is a SIM error: a locked or missing SIM
        fails the storage and message commands (AT+CPMS, AT+CMGL) before AT+CPIN? is asked
        (3GPP TS 27.007 9.2.1 for +CME ERROR, TS 27.005 3.2.5 for +CMS ERROR)."""
        table = _CMS_SIM if "+CMS ERROR" in self.final else _CME_SIM
        return None if self.code is None else table.get(self.code)


class CommandTimeout(DriverError):
    """The modem did not finish a command in time."""


class PortClosed(DriverError):
    """The serial port went away (unplugged, closed)."""


class LineSplitter:
    """Incremental CR/LF line splitter with a bounded buffer."""

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        self.max_line = max_line
        self._buffer = bytearray()
        self._discarding = False
        self.dropped = 0

    def feed(self, data: bytes) -> list[str]:
        lines: list[str] = []
        for byte in data:
            if byte in (0x0D, 0x0A):
                if self._buffer and not self._discarding:
                    lines.append(self._buffer.decode("latin-1"))
                self._buffer.clear()
                self._discarding = False
                continue
            if self._discarding:
                continue
            self._buffer.append(byte)
            if len(self._buffer) > self.max_line:
                self._buffer.clear()
                self._discarding = True
                self.dropped += 1
        return [line for line in (_clean(raw) for raw in lines) if line]

    @property
    def buffered(self) -> int:
        return len(self._buffer)


def _clean(line: str) -> str:
    # Noise is often non-printing bytes glued to a real line; keep the printable part.
    return "".join(ch for ch in line if " " <= ch <= "~").strip()


@dataclass(frozen=True, slots=True)
class Reply:
    command: str
    lines: tuple[str, ...]
    final: str

    def value(self, prefix: str) -> str | None:
        """The text after `prefix` on the first line that starts with it."""
        for line in self.lines:
            if line.startswith(prefix):
                return line[len(prefix) :].strip()
        return None


@dataclass(slots=True)
class _InFlight:
    command: str
    expect: tuple[str, ...]
    future: asyncio.Future[Reply]
    lines: list[str] = field(default_factory=list)
    pdu_may_follow: bool = False


@dataclass(slots=True)
class _Resync:
    marker: int
    future: asyncio.Future[None]
    seen_value: bool = False
    drained: int = 0

    def take(self, line: str) -> bool:
        """True when `line` belongs to the drain (stale or the marker's own reply)."""
        if line.isdigit() and len(line) <= 3 and int(line) == self.marker:
            self.seen_value = True
            return True
        if self.seen_value and line in _FINAL_OK:
            if not self.future.done():
                self.future.set_result(None)
            return True
        self.seen_value = False
        if line.startswith(URC_PREFIXES):
            return False  # notifications still reach their listeners
        self.drained += 1
        return True


Listener = Callable[[str, str | None], None]


class ATEngine:
    """Matches lines to the command in flight; dispatches URCs to listeners."""

    def __init__(self, write: Callable[[bytes], None]) -> None:
        self._write = write
        self._lock = asyncio.Lock()
        self._inflight: _InFlight | None = None
        self._listeners: list[tuple[str, Listener]] = []
        self._pdu_urc: str | None = None
        self._resync_state: _Resync | None = None
        self._marker = 0
        self.closed: BaseException | None = None
        self.timeouts = 0
        self.consecutive_timeouts = 0
        self.ignored_lines = 0
        # True from a command's timeout (or cancellation) until a resync succeeded.
        self.desynced = False
        self.resyncs = 0
        self.drained_lines = 0

    def add_listener(self, prefix: str, listener: Listener) -> Callable[[], None]:
        """Call `listener(line, pdu)` for every URC starting with `prefix`; returns a remover."""
        entry = (prefix, listener)
        self._listeners.append(entry)
        return lambda: self._listeners.remove(entry)

    async def command(self, command: str, timeout_s: float, expect: tuple[str, ...] = ()) -> Reply:
        """Send one command and wait for its final result code.

        `expect` names the reply prefixes this command produces (e.g. ``+CPIN:``) so a
        line that would otherwise look unsolicited is kept as the reply.
        """
        async with self._lock:
            if self.closed is not None:
                raise PortClosed(f"port closed: {self.closed}")
            if self.desynced:
                await self._resync(timeout_s * RESYNC_TIMEOUT_FACTOR, command)
            loop = asyncio.get_running_loop()
            inflight = _InFlight(command, expect, loop.create_future())
            self._inflight = inflight  # the waiter exists before the bytes leave
            try:
                self._write(command.encode("latin-1") + b"\r")
                async with asyncio.timeout(timeout_s):
                    reply = await asyncio.shield(inflight.future)
            except TimeoutError as exc:
                self.timeouts += 1
                self.consecutive_timeouts += 1
                raise CommandTimeout(f"{command}: no final result within {timeout_s}s") from exc
            finally:
                self._inflight = None
                if not inflight.future.done():
                    # Timed out or cancelled: its reply may still come; drain it first.
                    self.desynced = True
            self.consecutive_timeouts = 0
        if _FINAL_ERROR.match(reply.final):
            raise ATError(command, reply.final)
        return reply

    async def _resync(self, timeout_s: float, before: str) -> None:
        """Write a marker command and drop every line until the marker's own reply.

        The modem answers commands in order, so whatever a timed-out command still
        says arrives before the marker's value; it is drained, never matched. Raises
        :class:`CommandTimeout` (the modem is still not answering) and stays desynced.
        """
        self._marker = self._marker % MARKER_VALUES + 1
        marker = self._marker
        state = _Resync(marker, asyncio.get_running_loop().create_future())
        self._resync_state = state
        try:
            self._write(f"ATS{MARKER_REGISTER}={marker};S{MARKER_REGISTER}?\r".encode("latin-1"))
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(state.future)
        except TimeoutError as exc:
            self.timeouts += 1
            self.consecutive_timeouts += 1
            raise CommandTimeout(
                f"{before}: not sent, the modem did not resynchronise within {timeout_s}s"
            ) from exc
        finally:
            self._resync_state = None
            self.drained_lines += state.drained
        self.desynced = False
        self.resyncs += 1
        log.info("AT engine resynchronised", drained_lines=state.drained, marker=marker)

    def on_line(self, line: str) -> None:
        if self._pdu_urc is not None:
            urc, self._pdu_urc = self._pdu_urc, None
            if _HEX_LINE.match(line):
                self._dispatch(urc, line)
                return
            self._dispatch(urc, None)
        resync = self._resync_state
        if resync is not None and resync.take(line):
            return
        inflight = self._inflight
        if inflight is not None and not inflight.future.done():
            if line == inflight.command or line.upper() == inflight.command.upper():
                return  # echo
            if line in _FINAL_OK or _FINAL_ERROR.match(line):
                inflight.future.set_result(Reply(inflight.command, tuple(inflight.lines), line))
                return
            if any(line.startswith(p) for p in inflight.expect):
                inflight.lines.append(line)
                inflight.pdu_may_follow = True
                return
            if inflight.pdu_may_follow and _HEX_LINE.match(line):
                inflight.lines.append(line)  # the PDU under a +CMGR/+CMGL header
                inflight.pdu_may_follow = False
                return
        if line.startswith(URC_PREFIXES):
            if line.startswith(_PDU_URCS):
                self._pdu_urc = line
                return
            self._dispatch(line, None)
            return
        if inflight is not None and not inflight.future.done() and not inflight.expect:
            # A command without declared reply prefixes (AT+CGMI …) keeps every line.
            inflight.lines.append(line)
            return
        self.ignored_lines += 1
        log.debug("line outside any command", line=line[:80])

    def _dispatch(self, line: str, pdu: str | None) -> None:
        for prefix, listener in list(self._listeners):
            if line.startswith(prefix):
                try:
                    listener(line, pdu)
                except Exception:  # one listener must not break the port
                    log.exception("URC listener failed", line=line[:40])

    def close(self, reason: BaseException) -> None:
        self.closed = reason
        if self._inflight is not None and not self._inflight.future.done():
            self._inflight.future.set_exception(PortClosed(str(reason)))
        if self._resync_state is not None and not self._resync_state.future.done():
            self._resync_state.future.set_exception(PortClosed(str(reason)))


class ATProtocol(asyncio.Protocol):
    """asyncio glue: bytes in -> splitter -> engine; lost connection fails the command."""

    def __init__(self) -> None:
        self.splitter = LineSplitter()
        self.engine = ATEngine(self._write)
        self.transport: asyncio.Transport | None = None
        self.connected = asyncio.Event()
        self.lost = asyncio.Event()
        self.lost_reason: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.connected.set()

    def data_received(self, data: bytes) -> None:
        log.debug("rx", data=data[:200])  # raw bytes only at debug (trace) level
        for line in self.splitter.feed(data):
            self.engine.on_line(line)

    def connection_lost(self, exc: Exception | None) -> None:
        reason = exc or PortClosed("connection closed")
        self.lost_reason = reason
        self.engine.close(reason)
        self.lost.set()

    def _write(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise PortClosed("port is closed")
        log.debug("tx", data=data)
        self.transport.write(data)
