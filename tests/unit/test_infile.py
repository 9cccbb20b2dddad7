"""The LOAD DATA LOCAL guard (`dispatch.infile`) against a scripted server on a socket pair.

The client side is a real aiomysql `Connection` (the calls the guard makes are aiomysql's
own), wired to a socket pair after the handshake; the server side is a script that reads
the statement and answers with the file request the test chooses.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiomysql
import pymysql.err
import pytest
import structlog
from pymysql.constants import CLIENT

from dispatch import infile

OK = bytes([0, 3, 0]) + struct.pack("<HH", 2, 0)  # OK, 3 rows affected, autocommit


@dataclass
class Server:
    """The server end: reads whole packets, writes packets with a given sequence number."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    received: list[bytes] = field(default_factory=list)

    async def packet(self) -> tuple[int, bytes]:
        header = await self.reader.readexactly(4)
        payload = await self.reader.readexactly(int.from_bytes(header[:3], "little"))
        self.received.append(payload)
        return header[3], payload

    def send(self, seq: int, payload: bytes) -> None:
        self.writer.write(len(payload).to_bytes(3, "little") + bytes([seq]) + payload)

    async def at_eof(self) -> bool:
        return await self.reader.read(1) == b""


@contextlib.asynccontextmanager
async def wired() -> AsyncIterator[tuple[aiomysql.Connection, Server]]:
    """A connection as `infile.create_pool` makes them, logged in, and its server."""
    ours, theirs = socket.socketpair()
    conn = aiomysql.Connection(
        user="node", charset="utf8mb4", client_flag=CLIENT.LOCAL_FILES, local_infile=False
    )
    conn._reader, conn._writer = await asyncio.open_connection(sock=ours)
    conn.server_status = 2  # autocommit, as the handshake leaves it
    reader, writer = await asyncio.open_connection(sock=theirs)
    server = Server(reader, writer)
    try:
        yield conn, server
    finally:
        conn.close()
        writer.close()
        await writer.wait_closed()


def statement_name(payload: bytes) -> str:
    """The file name a LOAD DATA statement (a COM_QUERY payload) names."""
    match = re.match(rb"\x03LOAD DATA LOCAL INFILE '([^']+)' INTO TABLE", payload)
    assert match is not None, payload
    return match.group(1).decode()


async def serve_load(server: Server, ask: Callable[[str], str]) -> bytes:
    """Answer one LOAD DATA: request the file `ask` names, collect it, answer OK."""
    _, query = await server.packet()
    server.send(1, bytes([0xFB]) + ask(statement_name(query)).encode())
    content = b""
    while True:
        seq, payload = await server.packet()
        if not payload:
            break
        content += payload
    server.send(seq + 1, OK)
    return content


async def both(client: Awaitable[Any], server: Awaitable[Any]) -> tuple[Any, Any]:
    async with asyncio.timeout(5):
        return tuple(await asyncio.gather(client, server, return_exceptions=True))  # type: ignore[return-value]


async def test_load_serves_the_rows_for_the_name_its_statement_used() -> None:
    data = "01012345678\t안녕하세요\n".encode() * 3
    async with wired() as (conn, server):
        loaded, content = await both(
            infile.load(conn, "INTO TABLE `SMSQ_SEND_1` (dest_no, msg_contents)", data),
            serve_load(server, lambda name: name),
        )
        assert (loaded, content) == (3, data)
        assert not conn.closed
    names = {infile.file_name() for _ in range(100)}
    assert len(names) == 100 and all(re.fullmatch(r"hanjullo-[0-9a-f]{32}\.tsv", n) for n in names)


async def test_a_large_batch_goes_in_packets_below_the_protocol_limit() -> None:
    data = bytes(range(256)) * (infile.MAX_PACKET * 5 // 2 // 256)
    async with wired() as (conn, server):
        loaded, content = await both(
            infile.load(conn, "INTO TABLE `SMSQ_SEND_1` (dest_no)", data),
            serve_load(server, lambda name: name),
        )
        assert (loaded, content) == (3, data)
    # the statement, three file packets, the end packet
    assert [len(p) for p in server.received[1:]] == [infile.MAX_PACKET] * 2 + [
        len(data) - 2 * infile.MAX_PACKET,
        0,
    ]
    assert infile.MAX_PACKET < 0xFFFFFF


async def test_a_request_for_another_name_is_refused_logged_and_dropped() -> None:
    data = b"01012345678\tsecret rows\n"
    async with wired() as (conn, server):
        with structlog.testing.capture_logs() as logs:

            async def rogue() -> bool:
                _, query = await server.packet()
                statement_name(query)
                server.send(1, bytes([0xFB]) + b"/proc/self/environ")
                return await server.at_eof()  # the client hangs up without a byte

            refused, closed = await both(
                infile.load(conn, "INTO TABLE `SMSQ_SEND_1` (dest_no)", data), rogue()
            )
        assert isinstance(refused, infile.InfileRefused) and "/proc/self/environ" in str(refused)
        assert closed is True and conn.closed
        assert len(server.received) == 1  # the statement only: no file packet, no end packet
    (entry,) = [e for e in logs if e["log_level"] == "warning"]
    assert entry["requested"] == "/proc/self/environ" and "LOAD DATA" in entry["statement"]


async def test_a_server_error_leaves_the_connection_in_step() -> None:
    async with wired() as (conn, server):

        async def refuse() -> None:
            await server.packet()
            server.send(1, b"\xff" + struct.pack("<H", 1148) + b"#42000not allowed")

        failed, _ = await both(
            infile.load(conn, "INTO TABLE `SMSQ_SEND_1` (dest_no)", b""), refuse()
        )
        assert isinstance(failed, pymysql.err.MySQLError) and failed.args[0] == 1148
        assert not conn.closed


class OnePool:
    """Just enough of `aiomysql.Pool` for `infile.guarded`: hands out one connection, or
    fails to connect the way aiomysql does."""

    def __init__(self, conn: aiomysql.Connection | None, connect_error: BaseException | None):
        self.conn, self.connect_error = conn, connect_error

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[aiomysql.Connection]:
        if self.connect_error is not None:
            raise self.connect_error
        assert self.conn is not None
        yield self.conn


async def test_a_request_on_any_other_statement_is_refused_logged_and_dropped() -> None:
    async with wired() as (conn, server):

        async def rogue() -> None:
            await server.packet()
            server.send(1, bytes([0xFB]) + b"/etc/shadow")

        async def select() -> None:
            async with infile.guarded(OnePool(conn, None)) as guarded, guarded.cursor() as cur:  # type: ignore[arg-type]
                await cur.execute("SELECT 1")

        with structlog.testing.capture_logs() as logs:
            refused, _ = await both(select(), rogue())
        assert isinstance(refused, infile.InfileRefused) and conn.closed
        assert len(server.received) == 1
    assert [e["log_level"] for e in logs] == ["warning"]


async def test_a_request_at_connect_is_refused_and_other_errors_pass() -> None:
    at_connect = RuntimeError(
        "**WARN**: Received LOAD_LOCAL packet but local_infile option is false."
    )
    with structlog.testing.capture_logs() as logs, pytest.raises(infile.InfileRefused):
        async with infile.guarded(OnePool(None, at_connect)):  # type: ignore[arg-type]
            pass
    assert len(logs) == 1
    with pytest.raises(RuntimeError, match="something else"):
        async with infile.guarded(OnePool(None, RuntimeError("something else"))):  # type: ignore[arg-type]
            pass
