"""A small HTTP/1.1 server on a Unix socket, for the status API.

h11 does the protocol; this module adds routing, JSON errors for every 4xx
(including requests h11 cannot parse), bounded headers and bodies, the two roles
of the socket and the limits that keep a slow client from holding the daemon.
A handler failure answers 500 and leaves the server running.

Roles of the status socket (`SocketRoles`): whoever can connect (the socket
file's mode and group decide that) may read; a control, i.e. any method other
than GET, is served only to root or a member of the operator group, judged from
the peer's credentials (``SO_PEERCRED``), and refused with 403 otherwise. The
proxy's sockets (`ProxyRoles`) serve nginx's user alone: one only reads, the
other also acts, matching what nginx lets each client certificate do.

Limits: a whole request (headers and body) must arrive within the request
deadline counted from the moment the server starts waiting for it, however
steadily it trickles in; an answer must be taken by the client within the write
deadline; at most ``max_connections`` are open at once (the next is answered 503
and closed). Each is enforced per connection, so other clients are served while
a slow one is cut off.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import os
import pwd
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import h11
import structlog

log = structlog.get_logger("http")

# Headers beyond this are refused (431) before any handler runs.
MAX_HEADER_BYTES = 16 * 1024
READ_CHUNK = 8192
# Defaults of the [socket] limits (config/model.py names the settings): hanjulloctl sends a
# request at once and reads its answer at once, so ten seconds is generous for either.
REQUEST_TIMEOUT_S = 10.0
WRITE_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 32
# How long a refusal (408, 503) may take to write before the connection is simply dropped.
REFUSAL_WRITE_TIMEOUT_S = 1.0
# struct ucred of SO_PEERCRED: pid, uid, gid.
_UCRED = struct.Struct("3i")


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
class Peer:
    """Who is on the other end of a connection, as the kernel saw it at connect time."""

    pid: int
    uid: int
    gid: int


# A peer whose credentials cannot be read (never on a Unix socket on Linux): no role at all.
UNKNOWN_PEER = Peer(pid=0, uid=-1, gid=-1)


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    query: str
    body: bytes
    peer: Peer = field(default=UNKNOWN_PEER)
    # Who the proxy says the client is (its certificate's subject); only a server that
    # trusts its peer to say so (`client_header`) fills it, for the log.
    client: str = ""


class Roles(Protocol):
    def refused(self, request: Request) -> dict[str, Any] | None:
        """None when the request may be served; else the 403 answer's fields (its
        ``error`` names the fix)."""
        ...


def peer_of(sock: Any) -> Peer:
    """The SO_PEERCRED credentials of a connected Unix socket."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except (OSError, AttributeError):
        return UNKNOWN_PEER
    pid, uid, gid = _UCRED.unpack(raw)
    return Peer(pid=pid, uid=uid, gid=gid)


class SocketRoles:
    """Reads for anyone who can connect; controls for root or the operator group.

    The group database is read at each control (not cached), so adding an operator to the
    group takes effect without restarting the daemon. The lookups are parameters so the
    rules can be tested without real users (tests/integration/test_socket.py has real ones).
    """

    def __init__(
        self,
        operator_group: str,
        getpwuid: Callable[[int], Any] = pwd.getpwuid,
        getgrnam: Callable[[str], Any] = grp.getgrnam,
        getgrouplist: Callable[[str, int], list[int]] = os.getgrouplist,
    ) -> None:
        self.operator_group = operator_group
        self._getpwuid = getpwuid
        self._getgrnam = getgrnam
        self._getgrouplist = getgrouplist

    def refused(self, request: Request) -> dict[str, Any] | None:
        if request.method == "GET":
            return None
        refusal = self.refusal(request.peer, f"{request.method} {request.path}")
        if refusal is None:
            return None
        return {"error": refusal, "operator_group": self.operator_group}

    def refusal(self, peer: Peer, what: str) -> str | None:
        """None when the peer may do ``what`` (a control), else why not, naming the fix."""
        if peer.uid == 0:
            return None
        if peer.uid < 0:
            return f"{what} refused: the caller's credentials cannot be read"
        try:
            name = self._getpwuid(peer.uid).pw_name
        except KeyError:
            name = ""
        who = f"uid {peer.uid}" + (f" ({name})" if name else "")
        if not self.operator_group:
            return (
                f"{what} needs root: no [socket] operator_group is configured, and {who} "
                "is not root; fix: run it as root, or set [socket] operator_group and add "
                "the user to that group"
            )
        try:
            wanted = self._getgrnam(self.operator_group).gr_gid
        except KeyError:
            return (
                f"{what} needs root or membership of the operator group "
                f"'{self.operator_group}', which does not exist on this host; fix: "
                f"groupadd {self.operator_group}, then add {who} to it"
            )
        groups = {peer.gid}
        if name:
            with contextlib.suppress(KeyError, OSError):
                groups |= set(self._getgrouplist(name, peer.gid))
        if wanted in groups:
            return None
        return (
            f"{what} needs root or membership of the operator group '{self.operator_group}' "
            f"([socket] operator_group); {who} is not a member; fix: "
            f"usermod -aG {self.operator_group} {name or '<user>'}, then log in again"
        )


class ProxyRoles:
    """A socket of the proxy's (nginx): only root and the proxy's user may use it, whatever
    the socket file's mode says; with ``controls`` false it only reads.

    nginx sends a fleet certificate's requests to the read socket and an operator
    certificate's to the control socket, so the daemon grants each socket exactly what
    nginx lets its certificates do. The user is looked up at each request (not cached).
    """

    def __init__(
        self, proxy_user: str, controls: bool, getpwnam: Callable[[str], Any] = pwd.getpwnam
    ) -> None:
        self.proxy_user = proxy_user
        self.controls = controls
        self._getpwnam = getpwnam

    @property
    def socket(self) -> str:
        return "control" if self.controls else "read"

    def refused(self, request: Request) -> dict[str, Any] | None:
        what = f"{request.method} {request.path}"
        peer = request.peer
        if peer.uid != 0:
            try:
                proxy_uid = self._getpwnam(self.proxy_user).pw_uid
            except KeyError:
                proxy_uid = None
            if proxy_uid is None:
                error = (
                    f"{what} refused: [api] proxy_user '{self.proxy_user}' does not exist on "
                    "this host; fix: set it to nginx's user (nginx.conf's `user`, Debian: "
                    "www-data)"
                )
                return {"error": error, "socket": self.socket}
            if peer.uid != proxy_uid:
                error = (
                    f"{what} refused: this socket serves nginx's user "
                    f"'{self.proxy_user}' only, not uid {peer.uid}; fix: use the status "
                    "socket ([socket] path) locally"
                )
                return {"error": error, "socket": self.socket}
        if request.method != "GET" and not self.controls:
            error = (
                f"{what} refused: the read socket only reads; controls need an operator "
                "certificate, which nginx forwards to the control socket"
            )
            return {"error": error, "socket": self.socket}
        return None


Handler = Callable[[Request], Awaitable[Response]]
# Told of every answer: the server's name and the status code (a counter).
Observer = Callable[[str, int], None]


class _HeadersTooLarge(Exception):
    pass


@dataclass(frozen=True, slots=True)
class _Routed:
    request: Request
    handler: Handler


class SocketInUse(Exception):
    """Another process is serving on the socket path."""


class SharedSocketDirectory(Exception):
    """A socket whose directory the server would change is in a directory not its own."""


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


async def _close(writer: asyncio.StreamWriter) -> None:
    """Close, flushing what is buffered for a moment; a client that does not take it is
    aborted rather than waited for."""
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), REFUSAL_WRITE_TIMEOUT_S)
    except TimeoutError:
        writer.transport.abort()
    except Exception:
        pass


class UnixHTTPServer:
    def __init__(
        self,
        path: Path,
        routes: dict[tuple[str, str], Handler],
        mode: int = 0o660,
        group: str = "",
        max_body_bytes: int = 64 * 1024,
        roles: Roles | None = None,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        write_timeout_s: float = WRITE_TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS,
        name: str = "status",
        client_header: str = "",
        observer: Observer | None = None,
        directory_group: bool = False,
    ) -> None:
        """``client_header``: a request header naming the client, trusted for the log
        (only on a socket whose peers are vouched for); ``directory_group``: also give the
        socket's directory the socket's group, mode 0750 (a directory of its own)."""
        self.name = name
        self.client_header = client_header.lower().encode()
        self.observer = observer
        self.directory_group = directory_group
        self.path = path
        self.routes = routes
        self.mode = mode
        self.group = group
        self.max_body_bytes = max_body_bytes
        self.roles = roles or SocketRoles("")
        self.request_timeout_s = request_timeout_s
        self.write_timeout_s = write_timeout_s
        self.max_connections = max_connections
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self._connections_changed = asyncio.Condition()

    @property
    def connections(self) -> frozenset[asyncio.Task[Any]]:
        """The tasks of the connections open now."""
        return frozenset(self._connections)

    async def wait_connections(self, wanted: Callable[[int], bool]) -> None:
        """Until the number of open connections is one ``wanted`` accepts."""
        async with self._connections_changed:
            await self._connections_changed.wait_for(lambda: wanted(len(self._connections)))

    async def _count_changed(self) -> None:
        async with self._connections_changed:
            self._connections_changed.notify_all()

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.group and self.directory_group:
            self._own_directory()
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
            gid = grp.getgrnam(self.group).gr_gid
            os.chown(self.path, -1, gid)
            if self.directory_group:
                os.chown(self.path.parent, -1, gid)
                os.chmod(self.path.parent, 0o750)

    def _own_directory(self) -> None:
        """Refuse to regroup a directory others share (/tmp, /run): only one the daemon's
        user owns and nobody else may write to."""
        directory = self.path.parent
        info = directory.stat()
        if info.st_uid != os.geteuid() or info.st_mode & 0o002:
            raise SharedSocketDirectory(
                f"{directory} (owner uid {info.st_uid}, mode {info.st_mode & 0o7777:04o}) is "
                f"not a directory of this daemon's own, and {self.path.name} would give it "
                "its group and mode 0750; fix: put the socket in a directory of its own, "
                "e.g. /run/hanjullo-api/ (the unit's RuntimeDirectory)"
            )

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
        peer = peer_of(writer.get_extra_info("socket"))
        if len(self._connections) >= self.max_connections:
            log.warning(
                "status connection refused: connection cap reached",
                cap=self.max_connections,
                pid=peer.pid,
                uid=peer.uid,
            )
            await self._refuse(
                writer,
                Response.error(503, f"too many connections (cap {self.max_connections})"),
            )
            return
        self._connections.add(task)
        await self._count_changed()
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        try:
            while True:
                try:
                    async with asyncio.timeout(self.request_timeout_s):
                        got, keep = await self._read_request(conn, reader, peer)
                except TimeoutError:
                    if conn.their_state is h11.IDLE and not conn.trailing_data[0]:
                        # Nothing of a next request came: an idle keep-alive, not an error.
                        break
                    log.info(
                        "status client too slow: cut off at the request deadline",
                        deadline_s=self.request_timeout_s,
                        pid=peer.pid,
                        uid=peer.uid,
                    )
                    await self._refuse(
                        writer,
                        Response.error(
                            408, f"request not complete within {self.request_timeout_s:g} s"
                        ),
                    )
                    break
                if got is None:
                    break
                response, keep = (
                    await self._answer(got) if isinstance(got, _Routed) else (got, keep)
                )
                if not await self._send(conn, writer, response, keep, peer):
                    break
                if not keep or conn.our_state is not h11.DONE:
                    break
                try:
                    conn.start_next_cycle()
                except h11.LocalProtocolError:
                    break
        except ConnectionError:
            pass
        except Exception:
            log.exception("status connection failed")
        finally:
            self._connections.discard(task)
            await _close(writer)
            await self._count_changed()

    def _observe(self, status: int) -> None:
        if self.observer is not None:
            self.observer(self.name, status)

    async def _refuse(self, writer: asyncio.StreamWriter, response: Response) -> None:
        """Answer raw and close, giving the client little time to take the answer."""
        self._observe(response.status)
        head = (
            f"HTTP/1.1 {response.status} Error\r\ncontent-type: {response.content_type}\r\n"
            f"content-length: {len(response.body)}\r\nconnection: close\r\n\r\n"
        ).encode()
        try:
            writer.write(head + response.body)
            await asyncio.wait_for(writer.drain(), REFUSAL_WRITE_TIMEOUT_S)
        except (ConnectionError, TimeoutError):
            writer.transport.abort()
            return
        await _close(writer)

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
            # The caller holds the whole request to its deadline; no per-read timeout.
            data = await reader.read(READ_CHUNK)
            received += len(data)
            conn.receive_data(data)

    async def _read_request(
        self, conn: h11.Connection, reader: asyncio.StreamReader, peer: Peer
    ) -> tuple[Response | _Routed | None, bool]:
        """Read one request and route it: the request with its handler, or the error
        answer, and whether to keep the connection. None: the client closed."""
        try:
            event = await self._next_event(conn, reader, limit=MAX_HEADER_BYTES)
            if isinstance(event, h11.ConnectionClosed):
                return None, False
            assert isinstance(event, h11.Request)
            method = event.method.decode("ascii", "replace")
            target = event.target.decode("ascii", "replace")
            length = 0
            client = ""
            for name, value in event.headers:
                if name == b"content-length":
                    length = int(value)
                elif self.client_header and name == self.client_header:
                    client = value.decode("utf-8", "replace")
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
        return _Routed(Request(method, path, query, body, peer, client), handler), True

    async def _answer(self, routed: _Routed) -> tuple[Response, bool]:
        """The handler's answer, for a request the roles allow (403 otherwise)."""
        request = routed.request
        refused = await asyncio.to_thread(self.roles.refused, request)
        if refused is not None:
            log.warning(
                "status control refused" if request.method != "GET" else "status read refused",
                server=self.name,
                path=request.path,
                pid=request.peer.pid,
                uid=request.peer.uid,
                client=request.client or None,
            )
            return Response.json({**refused, "status": 403}, 403), True
        if request.method != "GET":
            log.info(
                "status control",
                server=self.name,
                path=request.path,
                pid=request.peer.pid,
                uid=request.peer.uid,
                client=request.client or None,
            )
        try:
            return await routed.handler(request), True
        except Exception:
            log.exception("status handler failed", path=request.path)
            return Response.error(500, "internal error; see the daemon log"), False

    async def _send(
        self,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        response: Response,
        keep: bool,
        peer: Peer,
    ) -> bool:
        """Write the answer within the write deadline; False when the client did not take
        it in time (the connection is then aborted, dropping what is still buffered)."""
        self._observe(response.status)
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
        try:
            await asyncio.wait_for(writer.drain(), self.write_timeout_s)
        except TimeoutError:
            log.info(
                "status client too slow: cut off at the write deadline",
                deadline_s=self.write_timeout_s,
                pid=peer.pid,
                uid=peer.uid,
            )
            writer.transport.abort()
            return False
        return True
