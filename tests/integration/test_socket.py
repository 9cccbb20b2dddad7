"""The status socket of a running daemon: its two roles judged on real users' credentials
(SO_PEERCRED), and a slow client cut off while `hanjulloctl status` keeps answering.

The users and groups are real (useradd/groupadd, created once and kept: the fixture is
idempotent, so runs in parallel or one after another share them). Each client runs in a
child forked from this test that takes the user's groups (initgroups) and uid before it
connects, so the daemon sees exactly what it would see from that user's shell; the child runs
`hanjulloctl`'s own code in-process, because the users may not reach this checkout's
interpreter.
"""

from __future__ import annotations

import contextlib
import grp
import io
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from daemon.cli.main import main as ctl_main
from simulators.harness import SimulatedNode
from tests.config_edits import settings

SOCKET_GROUP = "hjtest-socket"
OPERATOR_GROUP = "hjtest-ops"
# user -> supplementary groups
USERS = {"hjtest-reader": [SOCKET_GROUP], "hjtest-operator": [SOCKET_GROUP, OPERATOR_GROUP]}

# The slow client below and the deadline the daemon is configured with for it.
SLOWLORIS_BYTE_EVERY_S = 0.3
REQUEST_TIMEOUT_S = 2.0


def _ensure_group(name: str) -> None:
    try:
        grp.getgrnam(name)
    except KeyError:
        subprocess.run(["groupadd", "--system", name], check=True, capture_output=True)


def _ensure_user(name: str, groups: list[str]) -> None:
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True,
            capture_output=True,
        )
    # Exactly these supplementary groups, whatever an earlier run left.
    subprocess.run(["usermod", "-G", ",".join(groups), name], check=True, capture_output=True)


@pytest.fixture(scope="module")
def test_users() -> None:
    if os.geteuid() != 0:
        pytest.skip("creating users and groups needs root")
    for group in (SOCKET_GROUP, OPERATOR_GROUP):
        _ensure_group(group)
    for user, groups in USERS.items():
        _ensure_user(user, groups)


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A directory the test users can reach (a test's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="hanjullo-sock-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: str
    stderr: str


def as_user(user: str, body: Callable[[], int]) -> Outcome:
    """Run ``body`` in a forked child as ``user`` (its groups from the group database, as
    a login would set them); its exit code and what it printed."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            _child(user, body, out.fileno(), err.fileno())
        _, status = os.waitpid(pid, 0)
        out.seek(0)
        err.seek(0)
        return Outcome(os.waitstatus_to_exitcode(status), out.read().decode(), err.read().decode())


def _child(user: str, body: Callable[[], int], out: int, err: int) -> None:
    code = 99
    try:
        account = pwd.getpwnam(user)
        os.initgroups(user, account.pw_gid)
        os.setgid(account.pw_gid)
        os.setuid(account.pw_uid)
        sys.stdout = io.TextIOWrapper(os.fdopen(os.dup(out), "wb"), write_through=True)
        sys.stderr = io.TextIOWrapper(os.fdopen(os.dup(err), "wb"), write_through=True)
        code = body()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def http_status(path: Path, method: str, url: str) -> Callable[[], int]:
    """A client that prints the status code of one request (the daemon's JSON after it)."""

    def run() -> int:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(path))
            sock.sendall(
                f"{method} {url} HTTP/1.1\r\nHost: node\r\nContent-Length: 0\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        print(head.split(b" ")[1].decode(), body.decode())
        return 0

    return run


def hanjulloctl(*argv: str) -> Callable[[], int]:
    def run() -> int:
        return ctl_main(list(argv))

    return run


def slowloris(sock: socket.socket, cut_off: list[tuple[float, bytes]]) -> None:
    """One byte every SLOWLORIS_BYTE_EVERY_S of a request that would take minutes; records
    when the daemon ended it and what it answered."""
    request = b"POST /v1/agents/3/drain HTTP/1.1\r\nHost: node\r\nX-Padding: " + b"a" * 1000
    started = time.monotonic()
    sock.setblocking(False)
    answer = b""
    for byte in request:
        try:
            sock.send(bytes([byte]))
        except OSError:  # the daemon closed the connection
            break
        time.sleep(SLOWLORIS_BYTE_EVERY_S)
        try:
            answer = sock.recv(65536)
        except BlockingIOError:
            continue
        break  # an answer, or the end of the connection
    cut_off.append((time.monotonic() - started, answer))


@pytest.fixture
def roles_node(node_dir: Path, socket_dir: Path, test_users: None) -> Iterator[SimulatedNode]:
    node = SimulatedNode(
        node_dir,
        overrides=lambda text: settings(
            text,
            {
                "socket": {
                    "path": str(socket_dir / "node.sock"),
                    "group": SOCKET_GROUP,
                    "operator_group": OPERATOR_GROUP,
                    "mode": "0660",
                }
            },
        ),
    )
    try:
        node.db_init()
        node.start_daemon()
        yield node
    finally:
        node.close()


def test_a_socket_group_member_reads_and_only_an_operator_acts(
    roles_node: SimulatedNode, socket_dir: Path
) -> None:
    sock = socket_dir / "node.sock"
    reader_status = as_user("hjtest-reader", http_status(sock, "GET", "/v1/status"))
    assert reader_status.stdout.split()[0] == "200", reader_status
    refused = as_user("hjtest-reader", http_status(sock, "POST", "/v1/agents/3/drain"))
    code, _, body = refused.stdout.partition(" ")
    assert code == "403", refused
    assert '"status": 403' in body and f"'{OPERATOR_GROUP}'" in body
    assert "hjtest-reader" in body

    # hanjulloctl says why, naming the group that is needed; the drain did not happen.
    cli = as_user("hjtest-reader", hanjulloctl("agent", "drain", "3", "--socket", str(sock)))
    assert cli.code == 1 and cli.stdout == "", cli
    assert "refused by the daemon (403, not an operator)" in cli.stderr
    assert f"operator group '{OPERATOR_GROUP}'" in cli.stderr
    assert f"usermod -aG {OPERATOR_GROUP} hjtest-reader" in cli.stderr
    assert "Traceback" not in cli.stderr

    operator_status = as_user("hjtest-operator", http_status(sock, "GET", "/v1/status"))
    assert operator_status.stdout.split()[0] == "200", operator_status
    drained = as_user("hjtest-operator", http_status(sock, "POST", "/v1/agents/3/drain"))
    assert drained.stdout.split()[0] == "200", drained
    assert '"drained": true' in drained.stdout
    undrained = as_user(
        "hjtest-operator", hanjulloctl("agent", "undrain", "3", "--socket", str(sock))
    )
    assert undrained.code == 0, undrained


def test_a_slowloris_client_is_cut_off_at_the_request_deadline_while_status_answers(
    node_dir: Path,
) -> None:
    node = SimulatedNode(
        node_dir,
        overrides=lambda text: settings(text, {"socket": {"request_timeout_s": REQUEST_TIMEOUT_S}}),
    )
    cut_off: list[tuple[float, bytes]] = []
    clients: list[socket.socket] = []
    try:
        node.db_init()
        node.start_daemon()
        path = node.dir / "node.sock"
        clients = []
        for _ in range(3):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(path))
            clients.append(sock)
        threads = [
            threading.Thread(target=slowloris, args=(s, cut_off), daemon=True) for s in clients
        ]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        answered = 0
        # hanjulloctl status answers, one call after the other, while the slow clients hold
        # their connections; the old per-read timeout would have let them trickle for ever.
        while any(t.is_alive() for t in threads) and time.monotonic() - started < 20:
            result = node.ctl("status", timeout=10)
            assert "COMPONENT" in result.stdout
            answered += 1
        assert not any(t.is_alive() for t in threads), "a slow client was never cut off"
        assert answered >= 1
        assert len(cut_off) == 3
        for after, answer in cut_off:
            # Cut off at the deadline (plus the one pause it was in), told why.
            assert after < REQUEST_TIMEOUT_S + SLOWLORIS_BYTE_EVERY_S + 0.5, cut_off
            assert answer.startswith(b"HTTP/1.1 408 "), answer
    finally:
        for sock in clients:
            sock.close()
        node.close()
