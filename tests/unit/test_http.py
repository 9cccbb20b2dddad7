"""The status socket: JSON for every answer, bounded input, survives bad clients."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from daemon.http import Peer, Request, Response, SocketInUse, SocketRoles, UnixHTTPServer


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


# ---- roles ---------------------------------------------------------------------------------
class Refusing(SocketRoles):
    """Roles that refuse every control and record who asked (a test runs as one user)."""

    def __init__(self) -> None:
        super().__init__("hanjullo-ops")
        self.asked: list[tuple[Peer, str]] = []

    def refusal(self, peer: Peer, what: str) -> str | None:
        self.asked.append((peer, what))
        return f"{what} needs the operator group 'hanjullo-ops'"


async def test_a_control_is_refused_403_json_for_a_peer_the_roles_refuse(tmp_path: Path) -> None:
    roles = Refusing()
    srv = UnixHTTPServer(
        tmp_path / "s.sock",
        {("GET", "/v1/status"): ok, ("POST", "/v1/agents/*"): ok},
        roles=roles,
    )
    await srv.start()
    try:
        status, body = await exchange(
            srv.path, b"POST /v1/agents/3/drain HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"
        )
        assert status == 403
        assert body["status"] == 403 and body["operator_group"] == "hanjullo-ops"
        assert body["error"] == "POST /v1/agents/3/drain needs the operator group 'hanjullo-ops'"
        # The roles judged the kernel's credentials of the connecting process: this one.
        [(peer, _)] = roles.asked
        assert (peer.pid, peer.uid, peer.gid) == (os.getpid(), os.getuid(), os.getgid())
        # Reads are not judged at all.
        status, _ = await exchange(srv.path, b"GET /v1/status HTTP/1.1\r\nHost: a\r\n\r\n")
        assert status == 200 and len(roles.asked) == 1
    finally:
        await srv.close()


def account(name: str, uid: int, gid: int) -> SimpleNamespace:
    return SimpleNamespace(pw_name=name, pw_uid=uid, pw_gid=gid)


USERS = {1001: account("reader", 1001, 1001), 1002: account("oper", 1002, 1002)}
GROUPS = {"hanjullo": 900, "hanjullo-ops": 901}
MEMBERSHIP = {"reader": [1001, 900], "oper": [1002, 900, 901]}


def roles(operator_group: str = "hanjullo-ops") -> SocketRoles:
    return SocketRoles(
        operator_group,
        getpwuid=lambda uid: USERS[uid],
        getgrnam=lambda name: SimpleNamespace(gr_gid=GROUPS[name]),
        getgrouplist=lambda name, gid: [gid, *MEMBERSHIP[name]],
    )


def test_root_and_operator_group_members_may_act_and_the_refusal_names_the_group() -> None:
    what = "POST /v1/agents/3/drain"
    assert roles().refusal(Peer(10, 0, 0), what) is None
    assert roles().refusal(Peer(10, 1002, 1002), what) is None
    # A primary group counts: SO_PEERCRED's gid, even with no account in the database.
    assert roles().refusal(Peer(10, 4242, 901), what) is None
    refused = roles().refusal(Peer(10, 1001, 1001), what)
    assert refused is not None
    assert refused.startswith(f"{what} needs root or membership of the operator group")
    assert "'hanjullo-ops'" in refused and "uid 1001 (reader)" in refused
    assert "usermod -aG hanjullo-ops reader" in refused
    nobody = roles().refusal(Peer(10, 4242, 4242), what)
    assert nobody is not None and "uid 4242 is not a member" in nobody


def test_without_an_operator_group_only_root_may_act() -> None:
    assert roles("").refusal(Peer(1, 0, 0), "POST /x") is None
    refused = roles("").refusal(Peer(1, 1002, 1002), "POST /x")
    assert refused is not None and "no [socket] operator_group is configured" in refused
    gone = SocketRoles("no-such-group", getpwuid=lambda uid: USERS[uid]).refusal(
        Peer(1, 1002, 1002), "POST /x"
    )
    assert gone is not None and "does not exist on this host" in gone


# ---- slow clients --------------------------------------------------------------------------
@pytest.fixture
async def strict(tmp_path: Path):  # type: ignore[no-untyped-def]
    srv = UnixHTTPServer(
        tmp_path / "strict.sock",
        {("GET", "/v1/status"): ok, ("POST", "/v1/upload"): ok, ("GET", "/big"): big},
        max_body_bytes=64 * 1024 * 1024,
        request_timeout_s=0.3,
        write_timeout_s=0.3,
        max_connections=3,
    )
    await srv.start()
    yield srv
    await srv.close()


async def big(request: Request) -> Response:
    return Response(200, b"x" * (8 * 1024 * 1024), "text/plain")


async def read_answer(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes (bounded so a bug fails, never hangs).
    A client still writing when the server closes sees a broken pipe after the answer."""
    received = b""
    async with asyncio.timeout(5):
        while True:
            try:
                chunk = await reader.read(65536)
            except ConnectionError:
                return received
            if not chunk:
                return received
            received += chunk


async def test_a_client_that_keeps_trickling_is_cut_off_at_the_request_deadline(
    strict: UnixHTTPServer,
) -> None:
    reader, writer = await asyncio.open_unix_connection(str(strict.path))
    writer.write(b"POST /v1/upload HTTP/1.1\r\nHost: a\r\nContent-Length: 60000000\r\n\r\n")
    loop = asyncio.get_running_loop()
    started = loop.time()
    answer_read = asyncio.create_task(read_answer(reader))
    # One byte per turn of the loop: every read of the server finds something, so only a
    # deadline on the whole request (not on each read) ends this.
    while not answer_read.done():
        try:
            writer.write(b"a")
            await writer.drain()
        except ConnectionError:
            break
        await asyncio.sleep(0)
    answer = await answer_read
    elapsed = loop.time() - started
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:80]
    assert b'"status": 408' in answer and b"within 0.3 s" in answer
    assert 0.25 < elapsed < 2.0, elapsed
    await asyncio.wait_for(strict.wait_connections(lambda n: n == 0), 5)


async def test_others_are_served_while_a_slow_client_waits_for_its_deadline(
    strict: UnixHTTPServer,
) -> None:
    slow_reader, slow_writer = await asyncio.open_unix_connection(str(strict.path))
    slow_writer.write(b"GET /v1/sta")
    await slow_writer.drain()
    for _ in range(5):
        status, _ = await exchange(strict.path, b"GET /v1/status HTTP/1.1\r\nHost: a\r\n\r\n")
        assert status == 200
    answer = await read_answer(slow_reader)
    slow_writer.close()
    assert answer.startswith(b"HTTP/1.1 408 ")


async def test_an_idle_keep_alive_connection_is_closed_without_an_answer(
    strict: UnixHTTPServer,
) -> None:
    reader, writer = await asyncio.open_unix_connection(str(strict.path))
    writer.write(b"GET /v1/status HTTP/1.1\r\nHost: a\r\n\r\n")
    await writer.drain()
    answer = await read_answer(reader)
    writer.close()
    # One answer, then the server closed at the deadline of a next request that never came.
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.count(b"HTTP/1.1") == 1


async def test_a_client_that_does_not_read_its_answer_is_dropped_at_the_write_deadline(
    strict: UnixHTTPServer,
) -> None:
    reader, writer = await asyncio.open_unix_connection(str(strict.path))
    writer.write(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
    await writer.drain()
    await asyncio.wait_for(strict.wait_connections(lambda n: n == 1), 5)
    [task] = strict.connections
    # The client reads nothing; the server's connection ends on its own.
    await asyncio.wait_for(asyncio.shield(task), 5)
    assert not strict.connections
    status, _ = await exchange(strict.path, b"GET /v1/status HTTP/1.1\r\nHost: a\r\n\r\n")
    assert status == 200
    writer.close()
    assert len(await reader.read(-1)) < 8 * 1024 * 1024


async def test_connections_over_the_cap_are_answered_503_and_served_again_below_it(
    strict: UnixHTTPServer,
) -> None:
    held = [await asyncio.open_unix_connection(str(strict.path)) for _ in range(3)]
    # Each held connection is being served (waiting for its request) before the next comes.
    await asyncio.wait_for(strict.wait_connections(lambda n: n == 3), 5)
    status, body = await exchange(strict.path, b"GET /v1/status HTTP/1.1\r\nHost: a\r\n\r\n")
    assert status == 503 and body["error"] == "too many connections (cap 3)"
    _, writer = held.pop()
    writer.close()
    await asyncio.wait_for(strict.wait_connections(lambda n: n == 2), 5)
    status, _ = await exchange(strict.path, b"GET /v1/status HTTP/1.1\r\nHost: a\r\n\r\n")
    assert status == 200
    for _, w in held:
        w.close()
