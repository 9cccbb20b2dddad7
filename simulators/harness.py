"""Run a whole simulated node as real processes: for tests, benches and the demo.

A :class:`SimulatedNode` owns a directory with the example configuration, runs
``hanjulloctl db init``, starts ``hanjullo-sim`` and ``hanjullo-noded`` as child
processes and listens on its own ``NOTIFY_SOCKET`` the way systemd does, so
READY=1 is observed exactly as in production. Nothing in the daemon knows.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from config.example import instance_databases

BIN = Path(sys.executable).parent


def command(name: str) -> list[str]:
    """The console script `name` from this interpreter's environment."""
    path = BIN / name
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: install the project (pip install -e .)")
    return [str(path)]


def current_instance() -> int | None:
    """The simulated-node instance this process's nodes use (``HANJULLO_TEST_INSTANCE``):
    its own databases (`config.example.instance_databases`), so test runs of two checkouts
    never share a schema. Unset: the machine's ``test`` databases."""
    value = os.environ.get("HANJULLO_TEST_INSTANCE", "").strip()
    return int(value) if value else None


def instance_database() -> str:
    """The PostgreSQL and MySQL database of :func:`current_instance`."""
    return instance_databases(current_instance())[0]


def mysql(database: str | None = None, **extra: Any) -> Any:
    """A blocking MySQL connection to the local test database, in KST, autocommit
    (for tests, benches and the demo; the daemon and simulator use aiomysql)."""
    import pymysql

    return pymysql.connect(
        host="127.0.0.1",
        user="root",
        password="",
        database=database or instance_database(),
        autocommit=True,
        init_command="SET time_zone = '+09:00'",
        **extra,
    )


# MySQL connections a simulated node holds at most, by process. The daemon: its dispatcher's
# pool (8), the spam-test engine's (3) and the agent monitor's one connection; the
# simulator: one per agent (11). MariaDB's default max_connections (151) fits about six
# such nodes beside the machine's other clients; the harness raises it when a node would
# not fit (`mysql_headroom`) rather than shrinking the pools production runs with.
MYSQL_CONNECTIONS_DAEMON = 8 + 3 + 1
MYSQL_CONNECTIONS_SIMULATOR = 11


def mysql_headroom(needed: int) -> int | None:
    """Make room for `needed` more MySQL connections: raise the server's max_connections
    (a global, kept until the server restarts) when fewer are free; the new value, or None
    when there was room."""
    import pymysql

    conn = pymysql.connect(host="127.0.0.1", user="root", password="", autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT @@GLOBAL.max_connections")
            (allowed,) = cur.fetchone() or (0,)
            cur.execute("SHOW STATUS LIKE 'Threads_connected'")
            row = cur.fetchone()
            used = int(row[1]) if row else 0
            if allowed - used >= needed:
                return None
            wanted = used + needed + MYSQL_CONNECTIONS_DAEMON + MYSQL_CONNECTIONS_SIMULATOR
            cur.execute(f"SET GLOBAL max_connections = {int(wanted)}")
            return wanted
    finally:
        conn.close()


def wait_for(
    predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.05
) -> Any:
    """Poll `predicate` until it returns something truthy; raise TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}{detail}")
        time.sleep(interval_s)


class CommandFailed(RuntimeError):
    """A command of ours exited non-zero; the message carries its stderr."""


def _run(argv: list[str], check: bool, timeout: float) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise CommandFailed(
            f"{' '.join(argv[1:])} exited {result.returncode}: {result.stderr.strip()}"
        )
    return result


class NotifyListener:
    """A datagram socket standing in for systemd's notify socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[tuple[float, str]] = []

    def drain(self, timeout_s: float = 0.0) -> list[str]:
        self.sock.settimeout(timeout_s if timeout_s > 0 else None)
        if timeout_s <= 0:
            self.sock.setblocking(False)
        new = []
        while True:
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, TimeoutError):
                break
            text = data.decode()
            self.messages.append((time.monotonic(), text))
            new.append(text)
            self.sock.setblocking(False)
        return new

    def wait_for(self, field: str, timeout_s: float) -> float:
        """Monotonic time at which a message containing `field` (e.g. READY=1) arrived."""
        deadline = time.monotonic() + timeout_s
        while True:
            for stamp, text in self.messages:
                if field in text.split("\n"):
                    return stamp
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {field} within {timeout_s}s")
            self.drain(min(remaining, 0.1))

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class SimulatedNode:
    def __init__(
        self,
        directory: Path,
        phones_per_carrier: int = 1,
        overrides: Callable[[str], str] | None = None,
        instance: int | None = None,
    ) -> None:
        """`instance`: node N's own databases and ports (`config example --instance N`);
        None: this process's (:func:`current_instance`)."""
        self.instance = current_instance() if instance is None else instance
        self.dir = directory.resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.dir / "node.toml"
        text = subprocess.run(
            [
                *command("hanjulloctl"),
                "config",
                "example",
                "--sim",
                "--dir",
                str(self.dir),
                "--phones-per-carrier",
                str(phones_per_carrier),
                *([] if self.instance is None else ["--instance", str(self.instance)]),
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        if overrides is not None:
            text = overrides(text)
        self.config_path.write_text(text)
        self.sim: subprocess.Popen[bytes] | None = None
        self.daemon: subprocess.Popen[bytes] | None = None
        self.notify: NotifyListener | None = None
        self.daemon_started_at = 0.0

    # ---- processes ----------------------------------------------------------------------
    def ctl(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return _run(
            [*command("hanjulloctl"), *args, "--config", str(self.config_path)], check, timeout
        )

    def sim_ctl(
        self, *args: str, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        return _run(
            [*command("hanjullo-sim"), "ctl", "--config", str(self.config_path), *args],
            check,
            timeout,
        )

    def db_init(self) -> None:
        self.ctl("db", "init")

    def start_sim(
        self,
        timeout_s: float = 20.0,
        env: dict[str, str] | None = None,
        config_path: Path | None = None,
    ) -> None:
        """Start the simulator; `env` adds to its environment (``HANJULLO_…`` overrides);
        `config_path`: another configuration file than the node's (one whose servers are
        reached directly while the daemon's go through fault proxies)."""
        mysql_headroom(MYSQL_CONNECTIONS_SIMULATOR)
        log = (self.dir / "sim.stderr").open("ab")
        self.sim = subprocess.Popen(
            [*command("hanjullo-sim"), "--config", str(config_path or self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
            env=None if env is None else {**os.environ, **env},
        )
        wait_for(
            lambda: self.sim_ctl("status", check=False).returncode == 0 or self._sim_dead(),
            timeout_s,
            "the simulator's control socket",
        )
        if self._sim_dead():
            raise RuntimeError(f"simulator exited: see {self.dir / 'sim.stderr'}")

    def _sim_dead(self) -> bool:
        return self.sim is not None and self.sim.poll() is not None

    def start_daemon(
        self,
        wait_ready_s: float = 10.0,
        env: dict[str, str] | None = None,
        config_path: Path | None = None,
    ) -> float:
        """Start the daemon (on `config_path` instead of the node's configuration, e.g. one
        whose servers are behind fault proxies); return seconds from spawn to READY=1."""
        mysql_headroom(MYSQL_CONNECTIONS_DAEMON)
        if self.notify is None:
            self.notify = NotifyListener(self.dir / "notify.sock")
        self.notify.messages.clear()
        log = (self.dir / "noded.stderr").open("ab")
        self.daemon_started_at = time.monotonic()
        self.daemon = subprocess.Popen(
            [*command("hanjullo-noded"), "--config", str(config_path or self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
            env={**os.environ, **(env or {}), "NOTIFY_SOCKET": str(self.notify.path)},
        )
        ready = self.notify.wait_for("READY=1", wait_ready_s)
        return ready - self.daemon_started_at

    def status_config(self) -> dict[str, Any]:
        """The node's configuration as the daemon and simulator read it (TOML, parsed)."""
        import tomllib

        return tomllib.loads(self.config_path.read_text())

    def status(self) -> dict[str, Any]:
        out = self.ctl("status", "--json").stdout
        result: dict[str, Any] = json.loads(out)
        return result

    def component_states(self) -> dict[str, str]:
        return {c["name"]: c["state"] for c in self.status()["components"]}

    def wait_components(
        self, wanted: Callable[[dict[str, str]], bool], timeout_s: float, what: str
    ) -> dict[str, str]:
        result: dict[str, str] = wait_for(
            lambda: (states := self.component_states()) and wanted(states) and states,
            timeout_s,
            what,
            interval_s=0.25,
        )
        return result

    def stop_daemon(self, sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> int | None:
        if self.daemon is None:
            return None
        proc, self.daemon = self.daemon, None
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            return proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise

    def stop_sim(self) -> None:
        if self.sim is None:
            return
        proc, self.sim = self.sim, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop_daemon()
        self.stop_sim()
        if self.notify is not None:
            self.notify.close()
            self.notify = None

    def __enter__(self) -> SimulatedNode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def running_node(directory: Path, with_sim: bool = True, **kwargs: Any) -> Iterator[SimulatedNode]:
    node = SimulatedNode(directory, **kwargs)
    try:
        node.db_init()
        if with_sim:
            node.start_sim()
        node.start_daemon()
        yield node
    finally:
        node.close()
