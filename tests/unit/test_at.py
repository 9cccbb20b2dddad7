"""The AT layer over in-process transports: no serial port, no sleeping."""

from __future__ import annotations

import asyncio
import re
import tracemalloc
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.at import ATError, ATProtocol, CommandTimeout, LineSplitter, PortClosed

Replies = dict[str, bytes]


class FakeModem(asyncio.Transport):
    """Answers written commands from a table, delivering the reply in chunks."""

    def __init__(
        self,
        protocol: ATProtocol,
        replies: Replies,
        chunker: Callable[[bytes], list[bytes]] = lambda b: [b],
    ) -> None:
        super().__init__()
        self.protocol = protocol
        self.replies = replies
        self.chunker = chunker
        self.written: list[bytes] = []
        self.closed = False
        protocol.connection_made(self)

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.written.append(data)
        command = data.decode().strip()
        reply = self.replies.get(command)
        marker = re.fullmatch(r"ATS7=(\d+);S7\?", command)
        if marker is not None:  # the engine's resynchronisation marker
            reply = f"\r\n{int(marker.group(1)):03d}\r\n\r\nOK\r\n".encode()
        if reply is None:
            return  # silence: the command will time out
        loop = asyncio.get_running_loop()
        for chunk in self.chunker(reply):
            loop.call_soon(self.protocol.data_received, chunk)

    def push(self, data: bytes) -> None:
        asyncio.get_running_loop().call_soon(self.protocol.data_received, data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def bytewise(data: bytes) -> list[bytes]:
    return [bytes([b]) for b in data]


def noisy(data: bytes) -> list[bytes]:
    return [b"\x00\xff#~", b"\r\n~junkline\r\n", data, b"\x7f?"]


CHUNKERS = {"whole": lambda b: [b], "bytewise": bytewise, "noisy": noisy}
REPLIES: Replies = {
    "AT": b"\r\nOK\r\n",
    "AT+CPIN?": b"\r\n+CPIN: READY\r\n\r\nOK\r\n",
    "AT+CMGR=1": b"\r\n+CMGR: 0,,20\r\n"
    b"0791280100000000040A81202143658700086211725103506304C548B155\r\n\r\nOK\r\n",
    "AT+CMGD=9": b"\r\n+CMS ERROR: 321\r\n",
    "AT+ECHO": b"AT+ECHO\r\r\nOK\r\n",
}


@pytest.fixture(params=sorted(CHUNKERS))
def modem(request: pytest.FixtureRequest) -> tuple[ATProtocol, FakeModem]:
    protocol = ATProtocol()
    return protocol, FakeModem(protocol, REPLIES, CHUNKERS[request.param])


async def test_reply_lines_and_final_code(modem: tuple[ATProtocol, FakeModem]) -> None:
    protocol, _ = modem
    reply = await protocol.engine.command("AT+CPIN?", 1.0, ("+CPIN:",))
    assert reply.value("+CPIN:") == "READY" and reply.final == "OK"
    reply = await protocol.engine.command("AT+CMGR=1", 1.0, ("+CMGR:",))
    assert reply.value("+CMGR:") == "0,,20"
    assert any(line.startswith("0791") for line in reply.lines)


async def test_errors_carry_their_code(modem: tuple[ATProtocol, FakeModem]) -> None:
    protocol, _ = modem
    with pytest.raises(ATError) as info:
        await protocol.engine.command("AT+CMGD=9", 1.0)
    assert info.value.code == 321


async def test_echo_is_not_part_of_the_reply(modem: tuple[ATProtocol, FakeModem]) -> None:
    protocol, _ = modem
    reply = await protocol.engine.command("AT+ECHO", 1.0)
    assert "AT+ECHO" not in reply.lines


async def test_urc_goes_to_listeners_even_mid_command(modem: tuple[ATProtocol, FakeModem]) -> None:
    protocol, fake = modem
    seen: list[tuple[str, str | None]] = []
    protocol.engine.add_listener("+CMTI:", lambda line, pdu: seen.append((line, pdu)))
    protocol.engine.add_listener("+CMT:", lambda line, pdu: seen.append((line, pdu)))
    fake.replies["AT+CSQ"] = b'\r\n+CMTI: "SM",4\r\n\r\n+CSQ: 20,99\r\n\r\nOK\r\n'
    reply = await protocol.engine.command("AT+CSQ", 1.0, ("+CSQ:",))
    assert reply.lines == ("+CSQ: 20,99",)
    fake.push(b"\r\n+CMT: ,20\r\n0791AB\r\n")
    await protocol.engine.command("AT", 1.0)
    assert seen == [('+CMTI: "SM",4', None), ("+CMT: ,20", "0791AB")]


async def test_expected_prefix_is_a_reply_not_a_urc() -> None:
    protocol = ATProtocol()
    FakeModem(protocol, {"AT+CREG?": b"\r\n+CREG: 0,1\r\n\r\nOK\r\n"})
    urcs: list[str] = []
    protocol.engine.add_listener("+CREG:", lambda line, _: urcs.append(line))
    reply = await protocol.engine.command("AT+CREG?", 1.0, ("+CREG:",))
    assert reply.value("+CREG:") == "0,1" and urcs == []


async def test_timeouts_are_counted_and_reset() -> None:
    protocol = ATProtocol()
    FakeModem(protocol, {"AT": b"\r\nOK\r\n"})
    for expected in (1, 2):
        with pytest.raises(CommandTimeout):
            await protocol.engine.command("AT+SILENT", 0.01)
        assert protocol.engine.consecutive_timeouts == expected
    await protocol.engine.command("AT", 1.0)
    assert protocol.engine.consecutive_timeouts == 0 and protocol.engine.timeouts == 2


async def test_one_command_in_flight_at_a_time() -> None:
    protocol = ATProtocol()
    fake = FakeModem(protocol, {"AT+A": b"\r\nOK\r\n", "AT+B": b"\r\nOK\r\n"})
    await asyncio.gather(protocol.engine.command("AT+A", 1.0), protocol.engine.command("AT+B", 1.0))
    assert fake.written == [b"AT+A\r", b"AT+B\r"]


async def test_lost_port_fails_the_command_in_flight() -> None:
    protocol = ATProtocol()
    FakeModem(protocol, {})
    pending = asyncio.ensure_future(protocol.engine.command("AT", 5.0))
    await asyncio.sleep(0)
    protocol.connection_lost(OSError(5, "Input/output error"))
    with pytest.raises(PortClosed):
        await pending
    with pytest.raises(PortClosed):
        await protocol.engine.command("AT", 1.0)


def test_splitter_drops_overlong_lines_and_resynchronises() -> None:
    splitter = LineSplitter(max_line=16)
    lines = splitter.feed(b"x" * 100 + b"\r\nOK\r\n" + b"\x00\x01\xffA\r\n")
    assert lines == ["OK", "A"]
    assert splitter.dropped == 1 and splitter.buffered == 0


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=20))
def test_fuzz_splitter_and_engine_never_raise_and_stay_bounded(chunks: list[bytes]) -> None:
    protocol = ATProtocol()
    protocol.splitter.max_line = 256
    for chunk in chunks:
        protocol.data_received(chunk)
        assert protocol.splitter.buffered <= 257


def test_splitter_memory_is_bounded_on_endless_noise() -> None:
    splitter = LineSplitter(max_line=1024)
    tracemalloc.start()
    try:
        for _ in range(2000):
            splitter.feed(b"\x55" * 4096)
        current, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert current < 256 * 1024
