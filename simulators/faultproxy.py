"""A fault-injecting TCP proxy: the network between the daemon and one of its servers.

One :class:`FaultProxy` listens on a local port and relays every connection to one
upstream server (PostgreSQL, MariaDB or Redis), byte for byte, until told to
misbehave. Each failure mode is named and selectable at runtime and applies to the
connections it names (open ones, new ones, or both):

- **latency**: every chunk is forwarded `s` seconds after it arrived, in one
  direction or both (a real delay, not a throughput cap: chunks overlap in flight);
- **stall**: a black hole. Bytes are accepted and read but nothing is forwarded in
  either direction; a new connection is accepted and never connected upstream.
  Held bytes are delivered when the stall is lifted, as TCP would after a healed
  partition (until then the sender's kernel buffers fill and it blocks);
- **cut**: every open connection is closed now, with an RST (both peers see a reset)
  or a FIN (both peers see an orderly end of stream);
- **refuse**: the listener is closed, so a connect fails with ECONNREFUSED, exactly
  as if the server were down; open connections are untouched;
- **cut after N bytes**: a connection is cut once N bytes went through it in the
  chosen direction (mid-result, mid-LOAD DATA);
- **throttle**: a bandwidth cap per connection and direction;
- **rules** on what the client sends: a regular expression over the client→server
  byte stream (MySQL ``COM_QUERY`` text, PostgreSQL ``Parse``/``Query`` text and
  Redis commands travel there in plain) with an action on the connection that sent
  it — delay its forwarding, cut it, stall it — taken before the matching bytes are
  forwarded (the server never sees them) or just after (the server got them, the
  client will never learn the outcome), or an orphan: the client is reset at once
  and the statement reaches the server later; once, N times or every time.

Every connection has an id and per-connection statistics; every fault the proxy set
or carried out is in its fault log (time since start, connection, fault, detail).

Three ways to drive it: ``async with FaultProxy(0, ("127.0.0.1", 3306)) as proxy``
in asyncio code; :class:`FaultProxyThread` (the same proxy on a background loop, with
a blocking control API) in synchronous tests; and a JSON-lines control socket
(:func:`serve_control`, ``hanjullo-sim proxy serve|ctl``) for another process.

This module knows no protocol: it never parses what it relays (the rogue MySQL
server in :mod:`simulators.rogue_mysql` does). It imports nothing of the daemon.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import re
import signal
import socket
import struct
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

# A chunk read from one side at a time: large enough that LOAD DATA through the proxy
# keeps its speed, small enough that a byte limit or throttle can act inside a result.
READ_CHUNK = 64 * 1024
# Chunks held per direction while stalled or delayed before the proxy stops reading
# (then the sender's kernel buffers fill and it blocks, as behind a real partition).
HELD_CHUNKS = 64
# How much of the client->server stream a rule's expression can look back over when a
# statement arrives split across reads.
SCAN_TAIL = 64 * 1024
# Connecting upstream: a proxy in front of a dead server gives up like a client would.
UPSTREAM_CONNECT_TIMEOUT_S = 5.0
# A throttled connection forwards in slices of this fraction of a second's budget.
THROTTLE_SLICE_S = 0.05
# How long a synchronous caller waits for the proxy's loop to carry out one request.
CONTROL_TIMEOUT_S = 30.0
MAX_CONTROL_REQUEST = 1 << 20


class FaultProxyError(Exception):
    """A control request that cannot be carried out; the message says why."""


class Direction(StrEnum):
    UP = "up"  # client -> server
    DOWN = "down"  # server -> client
    BOTH = "both"

    def covers(self, other: Direction) -> bool:
        return self is Direction.BOTH or self is other


class CutMode(StrEnum):
    RST = "rst"  # both peers see a reset (ECONNRESET), like a crashed host or a firewall
    FIN = "fin"  # both peers see an orderly end of stream, like a server closing idle sessions


class RuleAction(StrEnum):
    DELAY = "delay"  # hold that connection's client->server forwarding for delay_s
    CUT = "cut"  # cut that connection (cut_mode)
    STALL = "stall"  # stall that connection in both directions until `clear()`
    # Reset the client's side now; the matched statement reaches the server delay_s later
    # and its answer is dropped: the server runs (commits) what the client gave up on.
    ORPHAN = "orphan"


class ConnState(StrEnum):
    HELD = "held"  # accepted while new connections stall: not yet connected upstream
    OPEN = "open"
    STALLED = "stalled"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Rule:
    """An action on the connection whose client->server bytes match `pattern`.

    `pattern` is a Python regular expression over the raw bytes (encoded as UTF-8;
    add ``(?i)`` for case-insensitive, ``(?s)`` for ``.`` to match newlines).
    `times`: how many matches fire it over the proxy's life (None: every one).
    `forward_first`: act after forwarding the matched bytes instead of before them;
    a cut then waits for the server's first reply bytes and drops them (the server
    received and ran the statement, the client never learns the outcome).
    """

    name: str
    pattern: str
    action: RuleAction
    delay_s: float = 0.0
    cut_mode: CutMode = CutMode.RST
    times: int | None = 1
    forward_first: bool = False

    def __post_init__(self) -> None:
        if self.action is RuleAction.DELAY and self.delay_s <= 0:
            raise FaultProxyError(f"rule {self.name!r}: a delay rule needs delay_s > 0")
        if self.times is not None and self.times < 1:
            raise FaultProxyError(f"rule {self.name!r}: times must be >= 1 or None (every)")
        try:
            re.compile(self.pattern.encode())
        except re.error as exc:
            raise FaultProxyError(f"rule {self.name!r}: bad pattern: {exc}") from exc


@dataclass(frozen=True, slots=True)
class FaultEvent:
    """One line of the fault log: a fault set, cleared or carried out."""

    at_s: float  # seconds since the proxy started
    wall: str  # UTC, ISO 8601
    proxy: str
    connection: int | None  # None: a setting that applies to the proxy
    fault: str
    detail: str = ""

    def line(self) -> str:
        conn = f"conn#{self.connection}" if self.connection is not None else "-"
        return f"{self.at_s:9.3f}s  {self.proxy:<8} {conn:<9} {self.fault:<14} {self.detail}"


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """A snapshot of one proxied connection's statistics."""

    id: int
    proxy: str
    client: str
    state: ConnState
    opened_at_s: float
    closed_at_s: float | None
    bytes_up: int  # forwarded client -> server
    bytes_down: int  # forwarded server -> client
    closed_by: str | None  # client, server, cut rst, rule <name>, byte limit, ...
    rules_fired: tuple[str, ...]


def format_fault_log(events: list[FaultEvent]) -> str:
    """The fault log as a bench prints it: one event a line."""
    return "\n".join(event.line() for event in events)


def format_connections(conns: list[ConnectionInfo]) -> str:
    lines = ["CONN   PROXY    STATE    UP_BYTES  DOWN_BYTES  CLOSED_BY"]
    for c in conns:
        lines.append(
            f"{c.id:<6} {c.proxy:<8} {c.state:<8} {c.bytes_up:>8}  {c.bytes_down:>10}"
            f"  {c.closed_by or ''}"
        )
    return "\n".join(lines)


class _EndOfStream:
    pass


_EOF = _EndOfStream()
_Item = tuple[float, bytes | _EndOfStream]


class _Cut(Exception):
    """Raised inside a pump when the proxy cut its connection."""


@dataclass(slots=True)
class _ActiveRule:
    rule: Rule
    regex: re.Pattern[bytes]
    hits: int = 0

    def take(self) -> bool:
        if self.rule.times is not None and self.hits >= self.rule.times:
            return False
        self.hits += 1
        return True


@dataclass(eq=False, slots=True)
class _Connection:
    id: int
    client: str
    opened_at: float
    client_writer: asyncio.StreamWriter
    flowing: asyncio.Event
    upstream_writer: asyncio.StreamWriter | None = None
    closed_at: float | None = None
    bytes_up: int = 0
    bytes_down: int = 0
    closed_by: str | None = None
    rules_fired: list[str] = field(default_factory=list)
    tail: bytes = b""
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    connected: bool = False
    killed: bool = False
    cut_on_reply: tuple[CutMode, str] | None = None  # a forward_first cut rule that fired
    orphaned: bool = False  # an orphan rule reset the client: the server's answers are dropped

    def forwarded(self, direction: Direction) -> int:
        if direction is Direction.UP:
            return self.bytes_up
        if direction is Direction.DOWN:
            return self.bytes_down
        return self.bytes_up + self.bytes_down

    def state(self) -> ConnState:
        if self.closed_at is not None:
            return ConnState.CLOSED
        if not self.connected:
            return ConnState.HELD
        return ConnState.OPEN if self.flowing.is_set() else ConnState.STALLED


def _set_linger_reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _send_fin(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)


class FaultProxy:
    """A TCP proxy from ``listen_host:listen_port`` to `upstream` with selectable faults.

    ``listen_port`` 0 picks a free port (read :attr:`port` after start). Control
    methods are coroutines that return once the change is in force (``cut_all``
    returns when every connection it cut is closed).
    """

    def __init__(
        self,
        listen_port: int,
        upstream: tuple[str, int],
        *,
        name: str = "proxy",
        listen_host: str = "127.0.0.1",
    ) -> None:
        self.name = name
        self.upstream = upstream
        self.listen_host = listen_host
        self._port = listen_port
        self._server: asyncio.AbstractServer | None = None
        self._ids = itertools.count(1)
        self._conns: dict[int, _Connection] = {}
        self._serving: dict[int, asyncio.Task[None]] = {}
        self._log: list[FaultEvent] = []
        self._logged = asyncio.Event()  # set and replaced on every new event
        self._started = 0.0
        self._latency = {Direction.UP: 0.0, Direction.DOWN: 0.0}
        self._throttle: dict[Direction, int | None] = {Direction.UP: None, Direction.DOWN: None}
        self._stall_new = False
        self._refusing = False
        self._byte_limit: tuple[int, Direction, CutMode] | None = None
        self._rules: dict[str, _ActiveRule] = {}

    # ---- life ---------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        return (self.listen_host, self._port)

    async def start(self) -> None:
        self._started = asyncio.get_running_loop().time()
        await self._listen()
        self._note(None, "start", f"{self.listen_host}:{self._port} -> {self.upstream_text}")

    async def close(self) -> None:
        """Stop listening and close every connection (FIN, as a proxy that exits)."""
        if self._server is not None:
            self._server.close()
            self._server = None
        await self._cut(list(self._conns.values()), CutMode.FIN, "proxy closed")

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, self.listen_host, self._port, limit=READ_CHUNK
        )
        self._port = self._server.sockets[0].getsockname()[1]

    @property
    def upstream_text(self) -> str:
        return f"{self.upstream[0]}:{self.upstream[1]}"

    # ---- faults -------------------------------------------------------------------------
    async def set_latency(self, seconds: float, direction: Direction = Direction.BOTH) -> None:
        """Forward each chunk `seconds` after it arrived (0 removes the latency)."""
        if seconds < 0:
            raise FaultProxyError("latency must be >= 0 seconds")
        for d in (Direction.UP, Direction.DOWN):
            if direction.covers(d):
                self._latency[d] = seconds
        self._note(None, "latency", f"{seconds}s {direction}")

    async def stall(self, *, new: bool = True, existing: bool = True) -> None:
        """Black-hole connections open now (`existing`) and/or accepted from now (`new`)."""
        if existing:
            for conn in self._open():
                conn.flowing.clear()
                self._note(conn.id, "stall", "existing connection")
        if new:
            self._stall_new = True
        self._note(None, "stall", f"new={new} existing={existing}")

    async def cut_all(self, mode: CutMode = CutMode.RST) -> int:
        """Cut every open connection now; the number cut."""
        conns = self._open()
        self._note(None, "cut all", f"{mode} ({len(conns)} connections)")
        await self._cut(conns, mode, f"cut {mode}")
        return len(conns)

    async def cut(self, connection: int, mode: CutMode = CutMode.RST) -> None:
        """Cut one connection by id."""
        conn = self._conns.get(connection)
        if conn is None or conn.closed_at is not None:
            raise FaultProxyError(f"no open connection {connection} on {self.name}")
        await self._cut([conn], mode, f"cut {mode}")

    async def refuse(self) -> None:
        """Stop listening: a new connect fails with ECONNREFUSED; open ones go on."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self._refusing = True
        self._note(None, "refuse", "listener closed")

    async def cut_after(
        self,
        nbytes: int | None,
        direction: Direction = Direction.DOWN,
        mode: CutMode = CutMode.RST,
    ) -> None:
        """Cut any connection once `nbytes` went through it in `direction` (None: off)."""
        if nbytes is not None and nbytes < 0:
            raise FaultProxyError("cut_after needs nbytes >= 0")
        self._byte_limit = None if nbytes is None else (nbytes, direction, mode)
        self._note(None, "cut after", f"{nbytes} bytes {direction} {mode}")

    async def throttle(
        self, bytes_per_s: int | None, direction: Direction = Direction.BOTH
    ) -> None:
        """Cap each connection's bandwidth in `direction` (None: no cap)."""
        if bytes_per_s is not None and bytes_per_s <= 0:
            raise FaultProxyError("throttle needs bytes_per_s > 0 (or None to remove it)")
        for d in (Direction.UP, Direction.DOWN):
            if direction.covers(d):
                self._throttle[d] = bytes_per_s
        self._note(None, "throttle", f"{bytes_per_s} B/s {direction}")

    async def add_rule(self, rule: Rule) -> None:
        """Act on connections whose client sends bytes matching the rule's pattern."""
        self._rules[rule.name] = _ActiveRule(rule, re.compile(rule.pattern.encode()))
        times = "every time" if rule.times is None else f"{rule.times}x"
        when = "after forwarding" if rule.forward_first else "before forwarding"
        action = (
            f"{rule.action} {rule.delay_s}s" if rule.action is RuleAction.DELAY else rule.action
        )
        self._note(
            None, "rule added", f"{rule.name}: /{rule.pattern}/ -> {action}, {when}, {times}"
        )

    async def remove_rule(self, name: str) -> None:
        if self._rules.pop(name, None) is None:
            raise FaultProxyError(f"no rule {name!r} on {self.name}")
        self._note(None, "rule removed", name)

    async def clear(self) -> None:
        """Back to pass-through: no latency, stall, refusal, limit, throttle or rule.

        Stalled connections resume and receive what was held for them."""
        self._latency = {Direction.UP: 0.0, Direction.DOWN: 0.0}
        self._throttle = {Direction.UP: None, Direction.DOWN: None}
        self._stall_new = False
        self._byte_limit = None
        self._rules.clear()
        for conn in self._open():
            conn.flowing.set()
        if self._refusing:
            await self._listen()
            self._refusing = False
        self._note(None, "clear", "pass-through")

    # ---- what happened ------------------------------------------------------------------
    def connections(self) -> list[ConnectionInfo]:
        return [self._info(c) for c in self._conns.values()]

    def fault_log(self) -> list[FaultEvent]:
        return list(self._log)

    def rule_hits(self, name: str) -> int:
        rule = self._rules.get(name)
        return 0 if rule is None else rule.hits

    async def wait_for_fault(
        self, fault: str, count: int = 1, timeout_s: float = 10.0
    ) -> list[FaultEvent]:
        """Wait until the log holds `count` events named `fault` (e.g. ``rule cut``)."""

        def found() -> list[FaultEvent]:
            return [e for e in self._log if e.fault == fault]

        async with asyncio.timeout(timeout_s):
            while len(found()) < count:
                await self._logged.wait()
        return found()

    def _info(self, c: _Connection) -> ConnectionInfo:
        return ConnectionInfo(
            id=c.id,
            proxy=self.name,
            client=c.client,
            state=c.state(),
            opened_at_s=round(c.opened_at - self._started, 6),
            closed_at_s=None if c.closed_at is None else round(c.closed_at - self._started, 6),
            bytes_up=c.bytes_up,
            bytes_down=c.bytes_down,
            closed_by=c.closed_by,
            rules_fired=tuple(c.rules_fired),
        )

    def _open(self) -> list[_Connection]:
        return [c for c in self._conns.values() if c.closed_at is None]

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _note(self, connection: int | None, fault: str, detail: str = "") -> None:
        self._log.append(
            FaultEvent(
                at_s=round(self._now() - self._started, 6),
                wall=datetime.now(UTC).isoformat(timespec="milliseconds"),
                proxy=self.name,
                connection=connection,
                fault=fault,
                detail=detail,
            )
        )
        logged, self._logged = self._logged, asyncio.Event()
        logged.set()

    # ---- relaying -----------------------------------------------------------------------
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        conn = _Connection(
            id=next(self._ids),
            client=f"{peer[0]}:{peer[1]}" if peer else "?",
            opened_at=self._now(),
            client_writer=writer,
            flowing=asyncio.Event(),
        )
        if not self._stall_new:
            conn.flowing.set()
        self._conns[conn.id] = conn
        task = asyncio.current_task()
        assert task is not None
        self._serving[conn.id] = task
        try:
            await self._serve(conn, reader)
        finally:
            self._serving.pop(conn.id, None)

    async def _serve(self, conn: _Connection, client_reader: asyncio.StreamReader) -> None:
        try:
            if not conn.flowing.is_set():
                self._note(conn.id, "stall", "new connection held")
                await conn.flowing.wait()
                if conn.killed:
                    return
            try:
                async with asyncio.timeout(UPSTREAM_CONNECT_TIMEOUT_S):
                    up_reader, up_writer = await asyncio.open_connection(
                        *self.upstream, limit=READ_CHUNK
                    )
            except (OSError, TimeoutError) as exc:
                self._note(conn.id, "upstream down", f"{self.upstream_text}: {exc!r}")
                conn.closed_by = "upstream unreachable"
                _set_linger_reset(conn.client_writer)
                return
            conn.upstream_writer = up_writer
            if conn.killed:  # cut while connecting upstream
                return
            conn.connected = True
            for writer in (conn.client_writer, up_writer):
                # drain() then returns only once the bytes are in the kernel, so a cut
                # right after forwarding (a rule's forward_first) never loses them.
                writer.transport.set_write_buffer_limits(high=0)
            up: asyncio.Queue[_Item] = asyncio.Queue(HELD_CHUNKS)
            down: asyncio.Queue[_Item] = asyncio.Queue(HELD_CHUNKS)
            conn.tasks = [
                asyncio.create_task(self._read(conn, client_reader, up, "client")),
                asyncio.create_task(self._write(conn, up, up_writer, Direction.UP)),
                asyncio.create_task(self._read(conn, up_reader, down, "server")),
                asyncio.create_task(self._write(conn, down, conn.client_writer, Direction.DOWN)),
            ]
            await asyncio.gather(*conn.tasks, return_exceptions=True)
        finally:
            if conn.closed_by is None:
                conn.closed_by = "client"
            for side in (conn.client_writer, conn.upstream_writer):
                if side is None:
                    continue
                if conn.killed:
                    side.transport.abort()
                else:
                    side.close()  # both ends said goodbye: flush, then FIN
            conn.closed_at = self._now()

    async def _read(
        self,
        conn: _Connection,
        reader: asyncio.StreamReader,
        queue: asyncio.Queue[_Item],
        side: str,
    ) -> None:
        try:
            while chunk := await reader.read(READ_CHUNK):
                await queue.put((self._now(), chunk))
        except OSError as exc:
            # The peer reset its side: a faithful proxy resets the other side too.
            self._kill(conn, CutMode.RST, f"{side} reset ({exc.__class__.__name__})")
            return
        await queue.put((self._now(), _EOF))

    async def _write(
        self,
        conn: _Connection,
        queue: asyncio.Queue[_Item],
        writer: asyncio.StreamWriter,
        direction: Direction,
    ) -> None:
        try:
            while True:
                arrived, chunk = await queue.get()
                if isinstance(chunk, _EndOfStream):
                    if conn.closed_by is None:
                        conn.closed_by = "client" if direction is Direction.UP else "server"
                    if writer.can_write_eof():
                        with contextlib.suppress(OSError):
                            writer.write_eof()
                    return
                await conn.flowing.wait()
                wait = arrived + self._latency[direction] - self._now()
                if wait > 0:
                    await asyncio.sleep(wait)
                    await conn.flowing.wait()
                if direction is Direction.UP and self._rules:
                    await self._forward_with_rules(conn, writer, chunk)
                elif direction is Direction.DOWN and conn.orphaned:
                    continue  # nobody is left to read it
                elif direction is Direction.DOWN and conn.cut_on_reply is not None:
                    mode, reason = conn.cut_on_reply
                    self._note(conn.id, "rule cut", f"{reason[5:]}: {mode}, reply dropped")
                    self._kill(conn, mode, reason)
                    return
                else:
                    await self._forward(conn, writer, chunk, direction)
        except _Cut:
            return
        except OSError as exc:
            peer = "server" if direction is Direction.UP else "client"
            self._kill(conn, CutMode.RST, f"{peer} reset ({exc.__class__.__name__})")

    async def _forward_with_rules(
        self, conn: _Connection, writer: asyncio.StreamWriter, chunk: bytes
    ) -> None:
        window = conn.tail + chunk
        base = len(conn.tail)
        hits: list[tuple[int, _ActiveRule]] = []
        for active in list(self._rules.values()):
            for match in active.regex.finditer(window):
                if match.end() <= base:
                    continue  # entirely in bytes already scanned
                if not active.take():
                    break
                at = match.end() if active.rule.forward_first else match.start()
                hits.append((max(at - base, 0), active))
        conn.tail = window[-SCAN_TAIL:]
        hits.sort(key=lambda hit: hit[0])
        done = 0
        for at, active in hits:
            await self._forward(conn, writer, chunk[done:at], Direction.UP)
            done = max(done, at)
            await self._fire(conn, active.rule)
        await self._forward(conn, writer, chunk[done:], Direction.UP)

    async def _fire(self, conn: _Connection, rule: Rule) -> None:
        conn.rules_fired.append(rule.name)
        if rule.action is RuleAction.DELAY:
            self._note(conn.id, "rule delay", f"{rule.name}: {rule.delay_s}s")
            await asyncio.sleep(rule.delay_s)
        elif rule.action is RuleAction.CUT and rule.forward_first:
            # Cut when the server answers, and drop the answer: the server surely got
            # and ran the statement (an RST right after forwarding could make the
            # server's kernel discard it unread), the client never learns its outcome.
            self._note(conn.id, "rule matched", f"{rule.name}: cut when the server answers")
            conn.cut_on_reply = (rule.cut_mode, f"rule {rule.name}")
        elif rule.action is RuleAction.ORPHAN:
            # The client sees a reset now; the server side stays open, gets the matched
            # bytes (and whatever the client had sent before the reset) after the delay,
            # then an end of stream: it runs the statement for a client that is gone.
            self._note(conn.id, "rule orphan", f"{rule.name}: server gets it {rule.delay_s}s on")
            conn.orphaned = True
            _set_linger_reset(conn.client_writer)
            conn.client_writer.transport.abort()
            await asyncio.sleep(rule.delay_s)
        elif rule.action is RuleAction.CUT:
            self._note(conn.id, "rule cut", f"{rule.name}: {rule.cut_mode}")
            self._kill(conn, rule.cut_mode, f"rule {rule.name}")
            raise _Cut
        else:
            self._note(conn.id, "rule stall", rule.name)
            conn.flowing.clear()
            await conn.flowing.wait()

    async def _forward(
        self, conn: _Connection, writer: asyncio.StreamWriter, data: bytes, direction: Direction
    ) -> None:
        cut_mode: CutMode | None = None
        if self._byte_limit is not None:
            limit, limit_direction, mode = self._byte_limit
            if limit_direction.covers(direction):
                room = max(limit - conn.forwarded(limit_direction), 0)
                if len(data) >= room:
                    data, cut_mode = data[:room], mode
        rate = self._throttle[direction]
        step = len(data) if rate is None else max(int(rate * THROTTLE_SLICE_S), 1)
        for start in range(0, len(data), max(step, 1)):
            piece = data[start : start + step]
            writer.write(piece)
            await writer.drain()
            if direction is Direction.UP:
                conn.bytes_up += len(piece)
            else:
                conn.bytes_down += len(piece)
            if rate is not None:
                await asyncio.sleep(len(piece) / rate)
        if cut_mode is not None:
            self._note(conn.id, "byte limit", f"{conn.forwarded(direction)} bytes {direction}")
            self._kill(conn, cut_mode, "byte limit")
            raise _Cut

    def _kill(self, conn: _Connection, mode: CutMode, reason: str) -> None:
        """Close both sides of `conn` now (RST or FIN) and stop its pumps."""
        if conn.closed_at is not None or conn.killed:
            return
        conn.killed = True
        conn.closed_by = reason
        for writer in (conn.client_writer, conn.upstream_writer):
            if writer is None:
                continue
            if mode is CutMode.RST:
                _set_linger_reset(writer)
            else:
                _send_fin(writer)
            writer.transport.abort()
        current = asyncio.current_task()
        for task in conn.tasks:
            if task is not current:
                task.cancel()
        conn.flowing.set()  # a held new connection waits in _serve itself: let it end

    async def _cut(self, conns: list[_Connection], mode: CutMode, reason: str) -> None:
        for conn in conns:
            self._kill(conn, mode, reason)
        waiting = [self._serving[c.id] for c in conns if c.id in self._serving]
        if waiting:
            await asyncio.wait(waiting, timeout=CONTROL_TIMEOUT_S)


# ---- synchronous callers ----------------------------------------------------------------------
class BackgroundLoop:
    """An asyncio loop on a daemon thread, so synchronous code can run coroutines on it."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()
        pending = asyncio.all_tasks(self.loop)
        for task in pending:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.close()

    def start(self) -> None:
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = CONTROL_TIMEOUT_S) -> T:
        """Run `coro` on the loop; block until it returns (its exception is raised here)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def call(self, fn: Callable[[], T]) -> T:
        """Call `fn` on the loop's thread (to read state the loop owns)."""

        async def wrapped() -> T:
            return fn()

        return self.run(wrapped())

    def stop(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(CONTROL_TIMEOUT_S)


class FaultProxyThread:
    """A :class:`FaultProxy` on a background loop, with a blocking API for synchronous tests.

    ``with FaultProxyThread(0, ("127.0.0.1", 3306), name="mysql") as proxy: ...``
    Each method does what the proxy's coroutine of the same name does, and returns
    when that is in force.
    """

    def __init__(
        self,
        listen_port: int,
        upstream: tuple[str, int],
        *,
        name: str = "proxy",
        listen_host: str = "127.0.0.1",
    ) -> None:
        self.proxy = FaultProxy(listen_port, upstream, name=name, listen_host=listen_host)
        self._bg = BackgroundLoop(f"faultproxy-{name}")

    @property
    def port(self) -> int:
        return self.proxy.port

    def start(self) -> None:
        self._bg.start()
        try:
            self._bg.run(self.proxy.start())
        except BaseException:
            self._bg.stop()
            raise

    def close(self) -> None:
        try:
            self._bg.run(self.proxy.close())
        finally:
            self._bg.stop()

    def __enter__(self) -> FaultProxyThread:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set_latency(self, seconds: float, direction: Direction = Direction.BOTH) -> None:
        self._bg.run(self.proxy.set_latency(seconds, direction))

    def stall(self, *, new: bool = True, existing: bool = True) -> None:
        self._bg.run(self.proxy.stall(new=new, existing=existing))

    def cut_all(self, mode: CutMode = CutMode.RST) -> int:
        return self._bg.run(self.proxy.cut_all(mode))

    def cut(self, connection: int, mode: CutMode = CutMode.RST) -> None:
        self._bg.run(self.proxy.cut(connection, mode))

    def refuse(self) -> None:
        self._bg.run(self.proxy.refuse())

    def cut_after(
        self, nbytes: int | None, direction: Direction = Direction.DOWN, mode: CutMode = CutMode.RST
    ) -> None:
        self._bg.run(self.proxy.cut_after(nbytes, direction, mode))

    def throttle(self, bytes_per_s: int | None, direction: Direction = Direction.BOTH) -> None:
        self._bg.run(self.proxy.throttle(bytes_per_s, direction))

    def add_rule(self, rule: Rule) -> None:
        self._bg.run(self.proxy.add_rule(rule))

    def remove_rule(self, name: str) -> None:
        self._bg.run(self.proxy.remove_rule(name))

    def clear(self) -> None:
        self._bg.run(self.proxy.clear())

    def connections(self) -> list[ConnectionInfo]:
        return self._bg.call(self.proxy.connections)

    def fault_log(self) -> list[FaultEvent]:
        return self._bg.call(self.proxy.fault_log)

    def rule_hits(self, name: str) -> int:
        return self._bg.call(lambda: self.proxy.rule_hits(name))

    def wait_for_fault(
        self, fault: str, count: int = 1, timeout_s: float = 10.0
    ) -> list[FaultEvent]:
        return self._bg.run(self.proxy.wait_for_fault(fault, count, timeout_s), timeout_s + 1)


# ---- another process: a JSON-lines control socket ----------------------------------------------
async def apply_command(proxies: Mapping[str, FaultProxy], request: Mapping[str, Any]) -> Any:
    """Carry out one control request (the JSON form of the methods above)."""
    cmd = request.get("cmd")
    if cmd == "status":
        return [asdict(c) for p in proxies.values() for c in p.connections()]
    if cmd == "log":
        events = sorted((e for p in proxies.values() for e in p.fault_log()), key=lambda e: e.wall)
        return [asdict(e) for e in events]
    target = str(request.get("proxy"))
    if target not in proxies:
        raise FaultProxyError(f"no proxy {target!r}; running: {', '.join(proxies)}")
    proxy = proxies[target]
    direction = Direction(request.get("direction", "both"))
    mode = CutMode(request.get("mode", "rst"))
    actions: dict[str, Callable[[], Awaitable[Any]]] = {
        "latency": lambda: proxy.set_latency(float(request["seconds"]), direction),
        "stall": lambda: proxy.stall(
            new=bool(request.get("new", True)), existing=bool(request.get("existing", True))
        ),
        "cut": lambda: (
            proxy.cut(int(request["connection"]), mode)
            if request.get("connection") is not None
            else proxy.cut_all(mode)
        ),
        "refuse": proxy.refuse,
        "cut_after": lambda: proxy.cut_after(
            None if request.get("bytes") is None else int(request["bytes"]),
            Direction(request.get("direction", "down")),
            mode,
        ),
        "throttle": lambda: proxy.throttle(
            None if request.get("bytes_per_s") is None else int(request["bytes_per_s"]),
            direction,
        ),
        "rule": lambda: proxy.add_rule(
            Rule(
                name=str(request["name"]),
                pattern=str(request["pattern"]),
                action=RuleAction(request["action"]),
                delay_s=float(request.get("delay_s", 0.0)),
                cut_mode=mode,
                times=None if request.get("times") is None else int(request["times"]),
                forward_first=bool(request.get("forward_first", False)),
            )
        ),
        "unrule": lambda: proxy.remove_rule(str(request["name"])),
        "clear": proxy.clear,
    }
    if cmd not in actions:
        raise FaultProxyError(f"unknown command {cmd!r}; known: status, log, {', '.join(actions)}")
    return await actions[str(cmd)]()


def _fresh_socket_path(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


async def serve_control(proxies: Mapping[str, FaultProxy], path: Path) -> asyncio.AbstractServer:
    """Serve :func:`apply_command` on a Unix socket: one JSON request a line, one reply a line
    (``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}``)."""

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    reply = {"ok": True, "result": await apply_command(proxies, json.loads(line))}
                except (FaultProxyError, ValueError, KeyError, TypeError) as exc:
                    reply = {"ok": False, "error": str(exc)}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    _fresh_socket_path(path)
    server = await asyncio.start_unix_server(client, path=str(path), limit=MAX_CONTROL_REQUEST)
    os.chmod(path, 0o600)
    return server


def control_request(path: Path, payload: Mapping[str, Any], timeout_s: float = 30.0) -> Any:
    """One request to a proxy control socket; its result, or FaultProxyError."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        sock.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise FaultProxyError(f"no fault proxy control socket at {path}: is it running?") from exc
    with sock, sock.makefile("rwb") as stream:
        stream.write(json.dumps(payload).encode() + b"\n")
        stream.flush()
        line = stream.readline()
    if not line:
        raise FaultProxyError("the fault proxy closed the control connection without answering")
    reply = json.loads(line)
    if not reply.get("ok"):
        raise FaultProxyError(reply.get("error", "unknown error"))
    return reply["result"]


# ---- `hanjullo-sim proxy serve|ctl` -------------------------------------------------------------
def _listen_spec(text: str) -> tuple[str, int, tuple[str, int]]:
    """``NAME=PORT:HOST:UPSTREAM_PORT`` (e.g. ``mysql=13306:127.0.0.1:3306``)."""
    try:
        name, rest = text.split("=", 1)
        port, host, upstream_port = rest.rsplit(":", 2)
        return name, int(port), (host, int(upstream_port))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected NAME=PORT:HOST:UPSTREAM_PORT, e.g. mysql=13306:127.0.0.1:3306"
        ) from exc


async def _serve_cli(specs: list[tuple[str, int, tuple[str, int]]], control: Path) -> int:
    proxies = {name: FaultProxy(port, upstream, name=name) for name, port, upstream in specs}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    for proxy in proxies.values():
        await proxy.start()
    server = await serve_control(proxies, control)
    for proxy in proxies.values():
        print(f"{proxy.name} {proxy.listen_host}:{proxy.port} -> {proxy.upstream_text}")
    print(f"control {control}", flush=True)
    await stop.wait()
    server.close()
    for proxy in proxies.values():
        await proxy.close()
    print(
        format_fault_log(
            sorted((e for p in proxies.values() for e in p.fault_log()), key=lambda e: e.wall)
        )
    )
    return 0


def build_parser(prog: str = "hanjullo-sim proxy") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="A fault-injecting TCP proxy")
    sub = parser.add_subparsers(dest="what", required=True)
    serve = sub.add_parser("serve", help="run proxies until SIGTERM, with a control socket")
    serve.add_argument(
        "--listen",
        action="append",
        type=_listen_spec,
        required=True,
        metavar="NAME=PORT:HOST:UPSTREAM_PORT",
    )
    serve.add_argument("--control", type=Path, required=True, help="control socket path")
    ctl = sub.add_parser("ctl", help="change a running proxy's faults")
    ctl.add_argument("--control", type=Path, required=True)
    ctl.add_argument("--json", action="store_true", help="print the reply as JSON")
    cmds = ctl.add_subparsers(dest="cmd", required=True)
    cmds.add_parser("status", help="every connection's statistics")
    cmds.add_parser("log", help="the fault log")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = cmds.add_parser(name, help=help_text)
        p.add_argument("proxy", help="the proxy's NAME from --listen")
        return p

    p = add("latency", "delay forwarding")
    p.add_argument("seconds", type=float)
    p.add_argument("--direction", choices=[d.value for d in Direction], default="both")
    p = add("stall", "black-hole connections")
    p.add_argument("--only", choices=["new", "existing"])
    p = add("cut", "cut every open connection (or one)")
    p.add_argument("--fin", dest="mode", action="store_const", const="fin", default="rst")
    p.add_argument("--connection", type=int)
    add("refuse", "stop listening (ECONNREFUSED)")
    p = add("cut-after", "cut connections after N bytes")
    p.add_argument("bytes", type=int)
    p.add_argument("--direction", choices=[d.value for d in Direction], default="down")
    p.add_argument("--fin", dest="mode", action="store_const", const="fin", default="rst")
    p = add("throttle", "cap bandwidth per connection")
    p.add_argument("bytes_per_s", type=int)
    p.add_argument("--direction", choices=[d.value for d in Direction], default="both")
    p = add("rule", "act on connections whose client sends PATTERN")
    p.add_argument("name")
    p.add_argument("pattern")
    p.add_argument("action", choices=[a.value for a in RuleAction])
    p.add_argument("--delay", dest="delay_s", type=float, default=0.0)
    p.add_argument("--fin", dest="mode", action="store_const", const="fin", default="rst")
    p.add_argument("--times", type=int, default=1)
    p.add_argument("--every", action="store_true", help="fire on every match")
    p.add_argument("--forward-first", action="store_true")
    p = add("unrule", "remove a rule")
    p.add_argument("name")
    add("clear", "back to pass-through")
    return parser


def _ctl_payload(args: argparse.Namespace) -> dict[str, Any]:
    cmd = str(args.cmd).replace("-", "_")
    payload: dict[str, Any] = {"cmd": cmd}
    for key, value in vars(args).items():
        if key in {"what", "control", "json", "cmd", "only", "every"} or value is None:
            continue
        payload[key] = value
    if cmd == "stall" and args.only:
        payload["new"] = args.only == "new"
        payload["existing"] = args.only == "existing"
    if cmd == "rule" and args.every:
        payload["times"] = None
    return payload


def main(argv: list[str] | None = None, prog: str = "hanjullo-sim proxy") -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        if args.what == "serve":
            return asyncio.run(_serve_cli(args.listen, args.control))
        result = control_request(args.control, _ctl_payload(args))
    except FaultProxyError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    if args.json or args.cmd not in {"status", "log"}:
        print(json.dumps(result))
    elif args.cmd == "log":
        print(format_fault_log([FaultEvent(**e) for e in result]))
    else:
        print(format_connections([ConnectionInfo(**c) for c in result]))
    return 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m simulators.faultproxy"))
