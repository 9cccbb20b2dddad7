"""The fault proxy's rules over a byte stream, against an in-process echo server.

The integration tests use real servers, whose statements arrive in one read; here a
statement is split across two reads on purpose (the second part is sent only after the
first came back through the proxy), the case a rule must still catch exactly once.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator

import pytest

from simulators.faultproxy import CutMode, FaultProxy, Rule, RuleAction
from simulators.rogue_mysql import CLIENT_COMPRESS, CLIENT_SSL, plain_greeting


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


async def test_a_rule_catches_a_statement_split_across_reads_once(echo_port: int) -> None:
    async with FaultProxy(0, ("127.0.0.1", echo_port), name="echo") as proxy:
        await proxy.add_rule(
            Rule("cut-2", r"INTO SMSQ_SEND_2\b", RuleAction.CUT, cut_mode=CutMode.FIN, times=None)
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"INSERT INTO SMSQ_")
        assert await reader.readexactly(17) == b"INSERT INTO SMSQ_"  # forwarded: no match yet
        writer.write(b"SEND_2 VALUES (1)")
        assert await reader.read(1024) == b""  # cut before the rest reached the server
        writer.close()
        (info,) = proxy.connections()
        assert info.bytes_up == 17 and info.rules_fired == ("cut-2",)
        assert info.closed_by == "rule cut-2"
        assert proxy.rule_hits("cut-2") == 1


async def test_a_rule_that_fired_its_times_lets_later_matches_through(echo_port: int) -> None:
    async with FaultProxy(0, ("127.0.0.1", echo_port), name="echo") as proxy:
        await proxy.add_rule(Rule("once", r"PING", RuleAction.CUT, cut_mode=CutMode.FIN, times=1))
        first_reader, first = await asyncio.open_connection("127.0.0.1", proxy.port)
        first.write(b"PING\r\n")
        assert await first_reader.read(1024) == b""
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"PING\r\nPING\r\n")
        assert await reader.readexactly(12) == b"PING\r\nPING\r\n"
        for w in (first, writer):
            w.close()


def test_the_rogue_strips_tls_and_compression_from_the_greeting() -> None:
    version = b"5.5.5-10.11.19-MariaDB\0"
    lower = 0xF7FF  # every lower capability, CLIENT_SSL and CLIENT_COMPRESS included
    upper = 0x81FF | (1 << 10)  # includes CLIENT_ZSTD_COMPRESSION_ALGORITHM (bit 26)
    greeting = (
        b"\x0a" + version + struct.pack("<I", 9) + b"12345678" + b"\0"
        + struct.pack("<H", lower | CLIENT_SSL | CLIENT_COMPRESS) + b"\x2d"
        + struct.pack("<H", 2) + struct.pack("<H", upper) + b"\x15" + b"\0" * 10
        + b"123456789012\0mysql_native_password\0"
    )  # fmt: skip
    plain = plain_greeting(greeting)
    at = 1 + len(version) + 4 + 8 + 1
    flags = (
        struct.unpack_from("<H", plain, at)[0] | struct.unpack_from("<H", plain, at + 5)[0] << 16
    )
    assert flags & (CLIENT_SSL | CLIENT_COMPRESS | 1 << 26) == 0
    assert flags | CLIENT_SSL | CLIENT_COMPRESS | 1 << 26 == (lower | upper << 16) | CLIENT_SSL
    assert len(plain) == len(greeting) and plain[at + 7 :] == greeting[at + 7 :]
