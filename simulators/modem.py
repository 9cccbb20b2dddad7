"""A USB LTE modem with a test SIM, on a pseudo-terminal.

The modem speaks the AT command set a Hanjullo test phone needs (everything
gammu asks for, per ../shared/MODEMS.md), stores received texts as real
SMS-DELIVER PDUs in a SIM storage of fixed capacity, and announces them with
``+CMTI`` when ``AT+CNMI`` asks for it. It counts how often each stored message
is read (``CMGL``/``CMGR``) so tests can tell event-driven reading from polling.

The pty's slave side is published under the stable path the configuration
names (a symlink, like a udev rule would make). Failure modes are named and
switchable at runtime (:class:`ModemFault`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import random
import re
import tty
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import structlog

from config.model import ModemConfig
from drivers import pdu
from drivers.errors import PduError

log = structlog.get_logger("sim.modem")

# A command line longer than this is garbage; the buffer is dropped.
MAX_LINE = 4096
# How many delivered messages' read counts are remembered after deletion.
READ_LOG_SIZE = 1000
_OPERATOR_NAMES = {"SKT": "SKTelecom", "KT": "olleh", "LGU": "LG U+"}


class ModemFault(StrEnum):
    OK = "ok"
    UNPLUG = "unplug"
    HANG = "hang"
    GARBAGE = "garbage"
    SIM_LOCKED = "sim-locked"
    NO_NETWORK = "no-network"
    SLOW = "slow"
    # The next AT+CMGD answers +CMS ERROR: 500 and deletes nothing; then back to ok.
    CMGD_FAIL_ONCE = "cmgd-fail-once"
    LATE = "late"  # every reply comes `late_delay_s` after its command, in order


class ModemProfile(StrEnum):
    """Modem families whose AT dialects the simulator speaks (docs/test-phones.md)."""

    GENERIC = "generic"
    HUAWEI = "huawei"  # E3372 in stick mode
    QUECTEL = "quectel"  # EC25
    SIMCOM = "simcom"  # SIM7600


@dataclass(frozen=True, slots=True)
class ProfileTraits:
    manufacturer: str
    model: str
    memories: tuple[str, ...]  # what AT+CPMS offers; the first is where texts go by default
    boot_urcs: tuple[str, ...]  # printed after power-up and after AT+CFUN=1,1
    delivery_urcs: tuple[str, ...] = ()  # status codes the family prints unasked


PROFILES = {
    ModemProfile.GENERIC: ProfileTraits("Hanjullo Simulated Modems", "", ("SM",), ()),
    ModemProfile.HUAWEI: ProfileTraits(
        "huawei",
        "E3372",
        ("ME",),
        ("^BOOT:12345678,0,0,0,72", "^SRVST: 2", "^MODE: 5,4", "^SIMST: 1"),
        ("^RSSI: 20", "^MODE: 17,17"),
    ),
    ModemProfile.QUECTEL: ProfileTraits(
        "Quectel", "EC25", ("SM", "ME", "MT"), ("RDY", "+CPIN: READY", "+QIND: SMS DONE")
    ),
    ModemProfile.SIMCOM: ProfileTraits(
        "SIMCOM INCORPORATED",
        "SIMCOM_SIM7600E-H",
        ("SM", "ME"),
        ("RDY", "+CPIN: READY", "SMS Ready", "PB DONE"),
    ),
}
# Seconds after a reset's OK before the boot codes appear (the modem restarting).
BOOT_URC_DELAY_S = 0.2


@dataclass(slots=True)
class StoredMessage:
    uid: int
    pdu: bytes
    read: bool = False
    reads: int = 0
    memory: str = "SM"  # the storage it was put in (<mem3> when it arrived)


@dataclass(slots=True)
class _Settings:
    echo: bool = True
    cmee: int = 0
    cmgf: int = 0
    cscs: str = "GSM"
    cnmi: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0)
    reg_n: dict[str, int] = field(default_factory=dict)  # CREG / CGREG / CEREG report mode
    cops_format: int = 2
    cfun: int = 1
    s_registers: dict[int, int] = field(default_factory=dict)
    curc: int = 1  # Huawei: periodic status codes on (AT^CURC=0 turns them off)


@dataclass(slots=True)
class ModemCounters:
    commands: int = 0
    cmgl: int = 0
    cmgr: int = 0
    cmti_sent: int = 0
    delivered: int = 0
    deleted: int = 0


class SimModem:
    def __init__(
        self,
        modem: ModemConfig,
        capacity: int,
        smsc: str,
        slow_delay_s: float,
        on_space: Callable[[], None] | None = None,
        seed: int = 0,
        late_delay_s: float = 3.0,
        profile: ModemProfile = ModemProfile.GENERIC,
    ) -> None:
        self.config = modem
        self.name = modem.label
        self.carrier = modem.carrier.value
        self.stable_path = Path(modem.device)
        self.capacity = capacity
        self.smsc = smsc
        self.slow_delay_s = slow_delay_s
        self.late_delay_s = late_delay_s
        self.profile = profile
        self.traits = PROFILES[profile]
        self.memory = self.read_memory = self.traits.memories[0]
        self._late_until = 0.0
        self.on_space = on_space
        self.fault = ModemFault.OK
        self.storage: dict[int, StoredMessage] = {}
        # Reads per delivered message, kept after deletion (the newest READ_LOG_SIZE).
        self.read_log: dict[int, int] = {}
        self.counters = ModemCounters()
        self.settings = _Settings()
        self._rng = random.Random(seed ^ hash(self.name))
        self._uid = 0
        self._master: int | None = None
        self._slave: int | None = None
        self.pty_name: str | None = None
        self._inbuf = bytearray()
        self._outbuf = bytearray()
        self._writing = False
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        digest = hashlib.sha256(modem.phone.encode()).hexdigest()
        self.imei = "35" + str(int(digest[:12], 16))[:13].rjust(13, "0")
        self.imsi = (modem.mcc_mnc[0] + str(int(digest[12:24], 16)))[:15]

    # ---- plug state ---------------------------------------------------------------------
    @property
    def plugged(self) -> bool:
        return self._master is not None

    def plug(self, new_name: bool = False) -> None:
        """Create the pty and publish it under the stable path."""
        if self.plugged:
            return
        previous = self.pty_name
        master, slave = os.openpty()
        name = os.ttyname(slave)
        if new_name and name == previous:
            # The kernel reused the old number; take the next one to prove re-resolution.
            master2, slave2 = os.openpty()
            os.close(master)
            os.close(slave)
            master, slave, name = master2, slave2, os.ttyname(slave2)
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._master, self._slave, self.pty_name = master, slave, name
        self.settings = _Settings()
        self._inbuf.clear()
        self._outbuf.clear()
        self.stable_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.stable_path.with_name(self.stable_path.name + ".new")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(name, tmp)
        os.replace(tmp, self.stable_path)
        loop = asyncio.get_running_loop()
        loop.add_reader(master, self._on_readable)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work(), name=f"modem-{self.name}")
        self.memory = self.read_memory = self.traits.memories[0]
        self._boot_urcs()
        log.info("modem plugged", modem=self.name, pty=name, path=str(self.stable_path))

    def _boot_urcs(self) -> None:
        for line in self.traits.boot_urcs:
            self._urc(line)

    def unplug(self) -> None:
        """The USB device disappears: the pty closes and the stable path goes away."""
        if not self.plugged:
            return
        assert self._master is not None and self._slave is not None
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._master)
        if self._writing:
            loop.remove_writer(self._master)
            self._writing = False
        with contextlib.suppress(FileNotFoundError):
            if self.stable_path.is_symlink() and os.readlink(self.stable_path) == self.pty_name:
                self.stable_path.unlink()
        os.close(self._master)
        os.close(self._slave)
        self._master = self._slave = None
        log.info("modem unplugged", modem=self.name)

    async def close(self) -> None:
        self.unplug()
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker

    def set_fault(self, fault: ModemFault, new_name: bool = False) -> None:
        if fault == ModemFault.UNPLUG:
            self.unplug()
        elif not self.plugged:
            self.plug(new_name=new_name)
        previous, self.fault = self.fault, fault
        if previous != fault:
            log.info("modem fault", modem=self.name, fault=fault.value)
        if self.can_receive() and self.on_space is not None:
            self.on_space()

    # ---- receiving from the network -----------------------------------------------------
    def can_receive(self) -> bool:
        """True when the network can hand this handset a message now."""
        return (
            self.plugged
            and self.fault not in (ModemFault.SIM_LOCKED, ModemFault.NO_NETWORK)
            and self.settings.cfun == 1
        )

    def free_slots(self) -> int:
        return self.capacity - len(self.storage)

    def deliver(self, pdus: list[bytes]) -> bool:
        """Store every part of one message, or none (returns False: the network holds it)."""
        if not self.can_receive() or self.free_slots() < len(pdus):
            return False
        for raw in pdus:
            index = next(i for i in range(1, self.capacity + 1) if i not in self.storage)
            self._uid += 1
            self.storage[index] = StoredMessage(self._uid, raw, memory=self.memory)
            self.counters.delivered += 1
            mode, mt = self.settings.cnmi[0], self.settings.cnmi[1]
            if mode and mt == 1:
                self.counters.cmti_sent += 1
                self._urc(f'+CMTI: "{self.memory}",{index}')
            elif mode and mt in (2, 3):
                tpdu_len = len(raw) - raw[0] - 1
                self._urc(f"+CMT: ,{tpdu_len}\r\n{raw.hex().upper()}")
                # Routed to the terminal, not stored (27.005 3.4.1, <mt>=2).
                del self.storage[index]
        if self.settings.curc:
            for line in self.traits.delivery_urcs:
                self._urc(line)
        return True

    def inbox(self) -> list[dict[str, Any]]:
        """What the handset holds, decoded and joined, with how often each was read."""
        out: list[dict[str, Any]] = []
        joiner = pdu.Reassembler(timeout_s=0)
        owner: dict[int, StoredMessage] = {}
        messages: list[pdu.Message] = []
        for index in sorted(self.storage):
            stored = self.storage[index]
            try:
                part = pdu.decode(stored.pdu)
            except PduError as exc:
                out.append({"index": index, "error": str(exc)})
                continue
            if isinstance(part, pdu.Deliver):
                owner[id(part)] = stored
                messages += joiner.add(part, 0.0)
        messages += joiner.expire(1.0)
        for message in messages:
            entry = message.as_json()
            stored_parts = [owner[id(p)] for p in message.parts]
            entry["parts"] = len(stored_parts)
            entry["uids"] = [s.uid for s in stored_parts]
            entry["reads"] = max(s.reads for s in stored_parts)
            out.append(entry)
        return out

    # ---- the serial side ----------------------------------------------------------------
    def _on_readable(self) -> None:
        assert self._master is not None
        try:
            data = os.read(self._master, 4096)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                return
            data = b""
        if data:
            self._queue.put_nowait(data)

    def _write(self, data: bytes) -> None:
        if self._master is None:
            return
        self._outbuf += data
        self._flush()

    def _flush(self) -> None:
        if self._master is None:
            return
        while self._outbuf:
            try:
                sent = os.write(self._master, self._outbuf)
            except BlockingIOError:
                break
            except OSError:
                self._outbuf.clear()
                return
            del self._outbuf[:sent]
        loop = asyncio.get_running_loop()
        if self._outbuf and not self._writing:
            loop.add_writer(self._master, self._flush)
            self._writing = True
        elif not self._outbuf and self._writing:
            loop.remove_writer(self._master)
            self._writing = False

    def _urc(self, line: str) -> None:
        if self.fault == ModemFault.HANG:
            return
        self._write(f"\r\n{line}\r\n".encode())

    async def _work(self) -> None:
        while True:
            data = await self._queue.get()
            if not self.plugged:
                continue
            for line in self._feed(data):
                if self.fault == ModemFault.HANG:
                    continue
                if self.fault == ModemFault.SLOW:
                    await asyncio.sleep(self.slow_delay_s)
                if not self.plugged:
                    break
                self._respond(line)

    def _feed(self, data: bytes) -> list[bytes]:
        lines = []
        for byte in data:
            if byte == 0x1B:  # ESC cancels the line being typed
                self._inbuf.clear()
                continue
            if self.settings.echo and self.fault != ModemFault.HANG:
                self._write(bytes([byte]))
            if byte in (0x0D, 0x0A):
                if self._inbuf:
                    lines.append(bytes(self._inbuf))
                    self._inbuf.clear()
                continue
            self._inbuf.append(byte)
            if len(self._inbuf) > MAX_LINE:
                self._inbuf.clear()
        return lines

    def _respond(self, raw: bytes) -> None:
        text = raw.decode("latin-1").strip()
        start = text.upper().find("AT")
        if start < 0:
            return
        self.counters.commands += 1
        lines, final = self._execute(text[start:])
        out = "".join(f"\r\n{line}\r\n" for line in lines) + f"\r\n{final}\r\n"
        if self.fault == ModemFault.GARBAGE:
            out = self._noisy(out)
        if self.fault == ModemFault.LATE:
            # Answered after the driver gave up, but in order, as a busy modem does.
            loop = asyncio.get_running_loop()
            when = max(loop.time() + self.late_delay_s, self._late_until)
            self._late_until = when
            loop.call_at(when, self._write, out.encode("latin-1"))
            return
        self._write(out.encode("latin-1"))

    def _noisy(self, reply: str) -> str:
        noise = "".join(
            chr(self._rng.choice([0x00, 0x7F, 0xFF, 0x23, 0x7E, 0x41, 0x3F]))
            for _ in range(self._rng.randint(3, 12))
        )
        junk_line = "".join(chr(self._rng.randint(0x21, 0x7E)) for _ in range(8))
        return noise + f"\r\n~{junk_line}\r\n" + reply + noise

    # ---- commands -----------------------------------------------------------------------
    def _error(self, code: int, cms: bool = False) -> str:
        if self.settings.cmee == 0:
            return "ERROR"
        return f"+{'CMS' if cms else 'CME'} ERROR: {code}"

    def _sim_ready(self) -> bool:
        return self.fault != ModemFault.SIM_LOCKED

    def _execute(self, command: str) -> tuple[list[str], str]:
        """One command line; `;` separates the commands of a compound line (V.250 5.2)."""
        bodies = command[2:].split(";")
        lines: list[str] = []
        for body in bodies:
            more, final = self._execute_one("AT" + body.strip())
            lines += more
            if final != "OK":
                return lines, final
        return lines, "OK"

    def _execute_one(self, command: str) -> tuple[list[str], str]:
        upper = command.upper()
        body = upper[2:]
        if self.profile == ModemProfile.HUAWEI and body.startswith("^CURC"):
            # gammu and ModemManager switch Huawei's periodic codes off with AT^CURC=0.
            if body == "^CURC?":
                return [f"^CURC: {self.settings.curc}"], "OK"
            if body in ("^CURC=0", "^CURC=1"):
                self.settings.curc = int(body[-1])
                return [], "OK"
            return [], self._error(4)
        if self.profile == ModemProfile.HUAWEI and body.startswith("^PORTSEL"):
            # Which port carries the unsolicited codes (gammu selects this one).
            return ([], "OK") if body in ("^PORTSEL=0", "^PORTSEL=1") else ([], self._error(4))
        match = re.fullmatch(r"S([0-9]{1,2})(=([0-9]{1,3})|\?)", body)
        if match:
            register = int(match.group(1))
            if match.group(3) is None:
                return [f"{self.settings.s_registers.get(register, 0):03d}"], "OK"
            value = int(match.group(3))
            if value > 255:
                return [], self._error(4)
            self.settings.s_registers[register] = value
            return [], "OK"
        if body in ("", "Z", "&F"):
            if body:
                self.settings = _Settings()
            return [], "OK"
        match = re.fullmatch(r"E([01]?)", body)
        if match:
            self.settings.echo = match.group(1) == "1"
            return [], "OK"
        if body in ("I", "I0"):
            return [f"Hanjullo SimModem {self.carrier}", "Revision: HSM_1.0.0"], "OK"
        if body in ("V1", "Q0", "&C1", "&D2", "+CMMS=2", "+CMMS=0", "+CMMS=1", "+CCWA=0"):
            return [], "OK"
        simple = {
            "+CGMI": [self.traits.manufacturer],
            "+CGMM": [self.traits.model or f"HSM-{self.carrier} LTE"],
            "+CGMR": ["HSM_1.0.0"],
            "+CGSN": [self.imei],
            "+CBC": ["+CBC: 0,100"],
            "+CSCA?": [f'+CSCA: "{self.smsc}",145'],
            "+CSMS?": ["+CSMS: 0,1,1,1"],
            "+CSMS=?": ["+CSMS: (0,1)"],
            "+CPMS=?": ["+CPMS: " + ",".join([self._memory_list()] * 3)],
            "+CNMI=?": ["+CNMI: (0-2),(0-3),(0,2),(0-2),(0,1)"],
            "+CSCS=?": ['+CSCS: ("GSM","IRA","UCS2","HEX")'],
            "+CMGF=?": ["+CMGF: (0)"],
            "+CMEE=?": ["+CMEE: (0-2)"],
            "+CFUN=?": ["+CFUN: (0,1,4),(0,1)"],
            "+CSQ=?": ["+CSQ: (0-31,99),(0-7,99)"],
        }
        if body in simple:
            return simple[body], "OK"
        if body == "+CIMI":
            return ([self.imsi], "OK") if self._sim_ready() else ([], self._error(11))
        if body.startswith("+CMEE"):
            match = re.fullmatch(r"\+CMEE(?:=([0-2]))?\??", body)
            if body == "+CMEE?":
                return [f"+CMEE: {self.settings.cmee}"], "OK"
            if match and match.group(1):
                self.settings.cmee = int(match.group(1))
                return [], "OK"
            return [], self._error(4)
        if body.startswith("+CFUN"):
            if body == "+CFUN?":
                return [f"+CFUN: {self.settings.cfun}"], "OK"
            match = re.fullmatch(r"\+CFUN=([014])(?:,([01]))?", body)
            if not match:
                return [], self._error(4)
            self.settings.cfun = 1 if match.group(2) == "1" else int(match.group(1))
            if match.group(2) == "1":
                # A reset: settings go back to their defaults (echo on again), as after
                # a power cycle, and the family's boot codes follow.
                cfun = self.settings.cfun
                self.settings = _Settings()
                self.settings.cfun = cfun
                self.memory = self.read_memory = self.traits.memories[0]
                asyncio.get_running_loop().call_later(BOOT_URC_DELAY_S, self._boot_urcs)
            if self.can_receive() and self.on_space is not None:
                self.on_space()
            return [], "OK"
        if body == "+CPIN?":
            return ["+CPIN: READY" if self._sim_ready() else "+CPIN: SIM PIN"], "OK"
        if body.startswith("+CPIN="):
            return [], self._error(16)  # incorrect password: the test SIM's PIN is unknown
        if body == "+CSQ":
            registered = self._registration() in (1, 5)
            return [f"+CSQ: {20 if registered else 99},99"], "OK"
        match = re.fullmatch(r"\+(C|CG|CE)REG(\?|=([0-2])|=\?)", body)
        if match:
            kind, n = match.group(1), match.group(3)
            if match.group(2) == "=?":
                return [f"+{kind}REG: (0-2)"], "OK"
            if n is not None:
                self.settings.reg_n[kind] = int(n)
                return [], "OK"
            mode, stat = self.settings.reg_n.get(kind, 0), self._registration()
            location = ',"1A2B","01C3D4E5",7' if mode == 2 and stat in (1, 5) else ""
            return [f"+{kind}REG: {mode},{stat}{location}"], "OK"
        if body == "+CGATT?":
            return [f"+CGATT: {1 if self._registration() == 1 else 0}"], "OK"
        if body == "+CGATT=?":
            return ["+CGATT: (0,1)"], "OK"
        if body.startswith("+COPS"):
            return self._cops(body)
        if body.startswith("+CSCS"):
            if body == "+CSCS?":
                return [f'+CSCS: "{self.settings.cscs}"'], "OK"
            match = re.fullmatch(r'\+CSCS="(GSM|IRA|UCS2|HEX)"', body)
            if match:
                self.settings.cscs = match.group(1)
                return [], "OK"
            return [], self._error(4)
        if body.startswith("+CMGF"):
            if body == "+CMGF?":
                return [f"+CMGF: {self.settings.cmgf}"], "OK"
            if body == "+CMGF=0":
                return [], "OK"
            return [], self._error(303, cms=True)  # this modem speaks PDU mode only
        if body.startswith("+CNMI"):
            if body == "+CNMI?":
                return ["+CNMI: " + ",".join(map(str, self.settings.cnmi))], "OK"
            match = re.fullmatch(r"\+CNMI=([0-9,]*)", body)
            if not match:
                return [], self._error(4)
            values = [int(v) if v else 0 for v in match.group(1).split(",")]
            values = [*values, 0, 0, 0, 0, 0][:5]
            if values[0] > 2 or values[1] > 3:
                return [], self._error(4)
            self.settings.cnmi = (values[0], values[1], values[2], values[3], values[4])
            return [], "OK"
        if body.startswith(("+CPMS", "+CMGL", "+CMGR", "+CMGD")):
            if not self._sim_ready():
                return [], self._error(11)
            return self._storage_command(body)
        return [], "ERROR"

    def _registration(self) -> int:
        if self.settings.cfun != 1 or not self._sim_ready():
            return 0
        if self.fault == ModemFault.NO_NETWORK:
            return 2
        return 1

    def _cops(self, body: str) -> tuple[list[str], str]:
        if body == "+COPS?":
            if self._registration() != 1:
                return ["+COPS: 0"], "OK"
            if self.settings.cops_format == 2:
                oper = self.config.mcc_mnc[0]
            else:
                oper = _OPERATOR_NAMES.get(self.carrier, self.carrier)
            return [f'+COPS: 0,{self.settings.cops_format},"{oper}",7'], "OK"
        match = re.fullmatch(r"\+COPS=3,([012])", body)
        if match:
            self.settings.cops_format = int(match.group(1))
            return [], "OK"
        if body in ("+COPS=0", "+COPS=2"):
            return [], "OK"
        if body == "+COPS=?":
            return [
                f'+COPS: (2,"{_OPERATOR_NAMES.get(self.carrier)}","",'
                f'"{self.config.mcc_mnc[0]}",7),,(0-4),(0-2)'
            ], "OK"
        return [], self._error(4)

    def _memory_list(self) -> str:
        return "(" + ",".join(f'"{m}"' for m in self.traits.memories) + ")"

    def _cpms_counts(self) -> str:
        used, total = len(self._visible()), self.capacity
        return f"{used},{total},{used},{total},{used},{total}"

    def _visible(self) -> dict[int, StoredMessage]:
        """What the read memory holds ("MT" is SIM and phone memory together)."""
        if self.read_memory == "MT":
            return self.storage
        return {i: m for i, m in self.storage.items() if m.memory == self.read_memory}

    def _storage_command(self, body: str) -> tuple[list[str], str]:
        visible = self._visible()
        if body == "+CPMS?":
            used, total = len(visible), self.capacity
            mem = self.memory
            return [
                f'+CPMS: "{mem}",{used},{total},"{mem}",{used},{total},"{mem}",{used},{total}'
            ], "OK"
        if body.startswith("+CPMS="):
            memories = re.findall(r'"([A-Z]+)"', body)
            if not memories or any(m not in self.traits.memories for m in memories):
                return [], self._error(302, cms=True)
            self.read_memory = memories[0]  # what CMGL/CMGR/CMGD act on (<mem1>)
            if len(memories) >= 3:
                self.memory = memories[2]  # where received texts go (<mem3>)
            return [f"+CPMS: {self._cpms_counts()}"], "OK"
        if body.startswith("+CMGL"):
            match = re.fullmatch(r"\+CMGL(?:=([0-4]))?", body)
            if not match:
                return [], self._error(302, cms=True)
            wanted = int(match.group(1) or 0)
            self.counters.cmgl += 1
            lines: list[str] = []
            for index in sorted(visible):
                stored = visible[index]
                stat = 1 if stored.read else 0
                if wanted not in (4, stat):
                    continue
                self._count_read(stored)
                lines.append(f"+CMGL: {index},{stat},,{self._tpdu_len(stored.pdu)}")
                lines.append(stored.pdu.hex().upper())
            return lines, "OK"
        if body.startswith("+CMGR"):
            match = re.fullmatch(r"\+CMGR=([0-9]+)", body)
            if not match:
                return [], self._error(4)
            index = int(match.group(1))
            self.counters.cmgr += 1
            if not 1 <= index <= self.capacity:
                return [], self._error(321, cms=True)
            found = visible.get(index)
            if found is None:
                return [], "OK"
            stat = 1 if found.read else 0
            self._count_read(found)
            return [f"+CMGR: {stat},,{self._tpdu_len(found.pdu)}", found.pdu.hex().upper()], "OK"
        if self.fault == ModemFault.CMGD_FAIL_ONCE:
            self.fault = ModemFault.OK
            log.info("modem fault", modem=self.name, fault="cmgd failed once")
            return [], self._error(500, cms=True)
        match = re.fullmatch(r"\+CMGD=([0-9]+)(?:,([0-4]))?", body)
        if not match:
            return [], self._error(4)
        index, flag = int(match.group(1)), int(match.group(2) or 0)
        if flag == 4:
            freed = len(visible)
            for i in visible:
                del self.storage[i]
        elif flag in (1, 2, 3):
            doomed = [i for i, s in visible.items() if s.read]
            for i in doomed:
                del self.storage[i]
            freed = len(doomed)
        else:
            if not 1 <= index <= self.capacity:
                return [], self._error(321, cms=True)
            freed = 1 if index in visible and self.storage.pop(index, None) is not None else 0
        self.counters.deleted += freed
        if freed and self.on_space is not None:
            self.on_space()
        return [], "OK"

    def _count_read(self, stored: StoredMessage) -> None:
        stored.reads += 1
        stored.read = True
        self.read_log[stored.uid] = stored.reads
        while len(self.read_log) > READ_LOG_SIZE:
            del self.read_log[next(iter(self.read_log))]

    @staticmethod
    def _tpdu_len(raw: bytes) -> int:
        return len(raw) - raw[0] - 1

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "carrier": self.carrier,
            "phone": self.config.phone,
            "path": str(self.stable_path),
            "pty": self.pty_name if self.plugged else None,
            "plugged": self.plugged,
            "fault": self.fault.value,
            "profile": self.profile.value,
            "stored": len(self.storage),
            "capacity": self.capacity,
            "reads": {str(uid): count for uid, count in self.read_log.items()},
            "last_uid": self._uid,
            "counters": {
                "commands": self.counters.commands,
                "cmgl": self.counters.cmgl,
                "cmgr": self.counters.cmgr,
                "cmti_sent": self.counters.cmti_sent,
                "delivered": self.counters.delivered,
                "deleted": self.counters.deleted,
            },
        }
