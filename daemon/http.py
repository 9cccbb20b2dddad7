"""A small HTTP/1.1 server on a Unix socket, for the status API.

h11 does the protocol; this module adds routing, JSON errors for every 4xx
(including requests h11 cannot parse), bounded headers and bodies, and an idle
timeout so a stuck client cannot hold a connection forever. A handler failure
answers 500 and leaves the server running.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h11
import structlog

log = structlog.get_logger("http")

# Headers beyond this are refused (431) before any handler runs.
MAX_HEADER_BYTES = 16 * 1024
# A client that sends nothing for this long is disconnected.
IDLE_TIMEOUT_S = 30.0
READ_CHUNK = 8192


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"

    @classmethod
    def json(cls, payload: Any, status: int = 200) -> Response:
        return cls(status, json.dumps(payload, ensure_ascii=False).encode() + b"\n")

    @classmethod
    def error(cls, status: int, message: str) -> Response:
        return cls.json({"error": message, "status": status}, status)


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    query: str
    body: bytes


Handler = Callable[[Request], Awaitable[Response]]


class _HeadersTooLarge(Exception):
    pass


class SocketInUse(Exception):
    """Another process is serving on the socket path."""


def _path_is_live(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(0.5)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    else:
        return True
    finally:
        probe.close()


class UnixHTTPServer:
    def __init__(
        self,
        path: Path,
        routes: dict[tuple[str, str], Handler],
        mode: int = 0o660,
        group: str = "",
        max_body_bytes: int = 64 * 1024,
    ) -> None:
        self.path = path
        self.routes = routes
        self.mode = mode
        self.group = group
        self.max_body_bytes = max_body_bytes
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            if _path_is_live(self.path):
                raise SocketInUse(
                    f"{self.path} is served by another process (is the daemon running?)"
                )
            self.path.unlink()
        self._server = await asyncio.start_unix_server(
            self._serve, path=str(self.path), limit=MAX_HEADER_BYTES
        )
        os.chmod(self.path, self.mode)
        if self.group:
            os.chown(self.path, -1, grp.getgrnam(self.group).gr_gid)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(self._connections, timeout=2.0)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        try:
            while True:
                response, keep = await self._one_request(conn, reader)
                if response is None:
                    break
                await self._send(conn, writer, response, keep)
                if not keep or conn.our_state is not h11.DONE:
                    break
                try:
                    conn.start_next_cycle()
                except h11.LocalProtocolError:
                    break
        except (ConnectionError, TimeoutError):
            pass
        except Exception:
            log.exception("status connection failed")
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _next_event(
        self, conn: h11.Connection, reader: asyncio.StreamReader, limit: int | None = None
    ) -> Any:
        received = 0
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                if limit is not None and isinstance(event, h11.Request) and received > limit:
                    raise _HeadersTooLarge
                return event
            data = await asyncio.wait_for(reader.read(READ_CHUNK), IDLE_TIMEOUT_S)
            received += len(data)
            conn.receive_data(data)

    async def _one_request(
        self, conn: h11.Connection, reader: asyncio.StreamReader
    ) -> tuple[Response | None, bool]:
        try:
            event = await self._next_event(conn, reader, limit=MAX_HEADER_BYTES)
            if isinstance(event, h11.ConnectionClosed):
                return None, False
            assert isinstance(event, h11.Request)
            method = event.method.decode("ascii", "replace")
            target = event.target.decode("ascii", "replace")
            length = 0
            for name, value in event.headers:
                if name == b"content-length":
                    length = int(value)
            if length > self.max_body_bytes:
                return Response.error(413, f"body over {self.max_body_bytes} bytes"), False
            body = b""
            while True:
                event = await self._next_event(conn, reader)
                if isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > self.max_body_bytes:
                        return Response.error(413, f"body over {self.max_body_bytes} bytes"), False
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:
                    return Response.error(400, "unexpected end of request"), False
        except _HeadersTooLarge:
            return Response.error(431, f"request headers over {MAX_HEADER_BYTES} bytes"), False
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            if status == 400 and "too large" in str(exc).lower():
                status = 431
            return Response.error(status, f"malformed request: {exc}"), False
        path, _, query = target.partition("?")
        handler = self.routes.get((method, path))
        if handler is None:
            # A route ending in "/*" serves every path below it (e.g. /v1/runs/<id>/cancel).
            handler = next(
                (
                    h
                    for (m, p), h in self.routes.items()
                    if m == method and p.endswith("/*") and path.startswith(p[:-1])
                ),
                None,
            )
        if handler is None:
            known_paths = {p for _, p in self.routes}
            if path in known_paths or any(
                p.endswith("/*") and path.startswith(p[:-1]) for p in known_paths
            ):
                return Response.error(405, f"{method} not allowed on {path}"), True
            return Response.error(404, f"no such path: {path}"), True
        try:
            return await handler(Request(method, path, query, body)), True
        except Exception:
            log.exception("status handler failed", path=path)
            return Response.error(500, "internal error; see the daemon log"), False

    async def _send(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, response: Response, keep: bool
    ) -> None:
        headers = [
            ("content-type", response.content_type),
            ("content-length", str(len(response.body))),
        ]
        if not keep:
            headers.append(("connection", "close"))
        try:
            data = conn.send(h11.Response(status_code=response.status, headers=headers))
            data += conn.send(h11.Data(data=response.body))
            data += conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            # The peer's half of the exchange was broken; answer raw and close.
            data = (
                f"HTTP/1.1 {response.status} Error\r\ncontent-type: {response.content_type}\r\n"
                f"content-length: {len(response.body)}\r\nconnection: close\r\n\r\n"
            ).encode() + response.body
        writer.write(data)
        await writer.drain()
