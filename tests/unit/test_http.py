"""The status socket: JSON for every answer, bounded input, survives bad clients."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from daemon.http import Request, Response, SocketInUse, UnixHTTPServer


async def ok(request: Request) -> Response:
    return Response.json({"path": request.path, "query": request.query})


async def broken(request: Request) -> Response:
    raise RuntimeError("handler bug")


@pytest.fixture
async def server(tmp_path: Path):  # type: ignore[no-untyped-def]
    srv = UnixHTTPServer(
        tmp_path / "s.sock",
        {("GET", "/v1/status"): ok, ("GET", "/bug"): broken},
        max_body_bytes=1024,
    )
    await srv.start()
    yield srv
    await srv.close()


async def exchange(path: Path, raw: bytes) -> tuple[int, dict[str, object]]:
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(raw)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    status = int(head.split(b" ")[1])
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    body = await reader.readexactly(length)
    writer.close()
    await writer.wait_closed()
    return status, json.loads(body)


async def test_status_route(server: UnixHTTPServer) -> None:
    status, body = await exchange(server.path, b"GET /v1/status?x=1 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert status == 200 and body == {"path": "/v1/status", "query": "x=1"}
    assert oct(server.path.stat().st_mode & 0o777) == oct(0o660)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"GET /nope HTTP/1.1\r\nHost: a\r\n\r\n", 404),
        (b"POST /v1/status HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}", 405),
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /v1/status HTTP/1.1\r\nHost: a\r\nContent-Length: 99999\r\n\r\n", 413),
        (b"GET /v1/status HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 20000 + b"\r\n\r\n", 431),
        (b"GET /bug HTTP/1.1\r\nHost: a\r\n\r\n", 500),
    ],
)
async def test_errors_are_json(server: UnixHTTPServer, raw: bytes, expected: int) -> None:
    status, body = await exchange(server.path, raw)
    assert status == expected
    assert body["status"] == expected and isinstance(body["error"], str)
    # The server keeps serving after every kind of bad request.
    status, _ = await exchange(server.path, b"GET /v1/status HTTP/1.1\r\nHost: a\r\n\r\n")
    assert status == 200


async def test_second_server_on_live_socket_is_refused(server: UnixHTTPServer) -> None:
    other = UnixHTTPServer(server.path, {})
    with pytest.raises(SocketInUse):
        await other.start()


async def test_stale_socket_file_is_replaced_and_removed_on_close(tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    path.write_text("")
    srv = UnixHTTPServer(path, {("GET", "/v1/status"): ok})
    await srv.start()
    status, _ = await exchange(path, b"GET /v1/status HTTP/1.1\r\nHost: a\r\n\r\n")
    assert status == 200
    await srv.close()
    assert not path.exists()
