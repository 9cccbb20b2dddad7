"""Stopping and starting the machine's real PostgreSQL, MariaDB and Redis.

Used by the outage tests, with the same commands `.ci/run` uses to bring them up.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

PORTS = {"postgres": 5432, "mariadb": 3306, "redis": 6379}


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _pg_version() -> str:
    return sorted(os.listdir("/etc/postgresql"))[-1]


# The machine's servers run on the real clock, also when the tests run under libfaketime
# (tests/faked-clock.sh), unless HANJULLO_FAKED_SERVERS=1 says the whole machine's clock is
# faked: then PostgreSQL or MariaDB started here keeps the faked clock like everything
# else. Redis stays on the real clock: libfaketime cannot start it (its allocator calls
# clock_gettime while libfaketime initialises), and the node uses only relative expiry
# times there, never Redis's calendar. Clients
# (stopping a server, psql, redis-cli) always run on the real clock: under a faked clock
# redis-cli's `shutdown` hung past its timeout.
_REAL_CLOCK_ENV = {
    k: v for k, v in os.environ.items() if k != "LD_PRELOAD" and not k.startswith("FAKETIME")
}
_SERVER_ENV = (
    dict(os.environ) if os.environ.get("HANJULLO_FAKED_SERVERS") == "1" else _REAL_CLOCK_ENV
)


def _run(*args: str, server: bool = False) -> None:
    env = _SERVER_ENV if server else _REAL_CLOCK_ENV
    subprocess.run(args, check=True, capture_output=True, timeout=60, env=env)


def stop(name: str) -> None:
    if name == "postgres":
        _run(
            "pg_ctlcluster",
            "--skip-systemctl-redirect",
            _pg_version(),
            "main",
            "stop",
            "-m",
            "fast",
        )
    elif name == "mariadb":
        _run("mysqladmin", "-uroot", "-h127.0.0.1", "shutdown")
    elif name == "redis":
        subprocess.run(
            ["redis-cli", "-p", "6379", "shutdown", "nosave"],
            capture_output=True,
            timeout=30,
            check=False,
            env=_REAL_CLOCK_ENV,
        )
    _wait(name, up=False)
    if name == "mariadb":
        _wait_exited("/usr/sbin/mariadbd")


def _wait_exited(executable: str, timeout_s: float = 60.0) -> None:
    """Wait until no process runs `executable`: MariaDB closes its port before it has
    finished shutting down, and `start-stop-daemon --oknodo` would then start nothing."""
    deadline = time.monotonic() + timeout_s
    while _running(executable):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{executable} still running")
        time.sleep(0.2)


def _running(executable: str) -> bool:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/exe") == executable:
                return True
        except OSError:  # gone, a zombie (no exe), or not ours to read
            continue
    return False


def start(name: str) -> None:
    if name == "postgres" and _SERVER_ENV is not _REAL_CLOCK_ENV:
        # pg_ctlcluster replaces the environment with the cluster's `environment` file,
        # which would drop libfaketime: start the cluster with its own pg_ctl instead.
        version = _pg_version()
        Path("/run/postgresql").mkdir(parents=True, exist_ok=True)
        _run("chown", "postgres:postgres", "/run/postgresql")
        _run(
            "runuser",
            "-u",
            "postgres",
            "--",
            f"/usr/lib/postgresql/{version}/bin/pg_ctl",
            "start",
            "-w",
            "-D",
            f"/var/lib/postgresql/{version}/main",
            "-l",
            f"/var/log/postgresql/postgresql-{version}-main.log",
            "-o",
            f"-c config_file=/etc/postgresql/{version}/main/postgresql.conf",
            server=True,
        )
    elif name == "postgres":
        _run("pg_ctlcluster", "--skip-systemctl-redirect", _pg_version(), "main", "start")
    elif name == "mariadb":
        Path("/run/mysqld").mkdir(parents=True, exist_ok=True)
        _run("chown", "mysql:mysql", "/run/mysqld")
        _run(
            "start-stop-daemon",
            "--start",
            "--oknodo",
            "--background",
            "--exec",
            "/usr/sbin/mariadbd",
            "--",
            "--user=mysql",
            server=True,
        )
    elif name == "redis":
        Path("/var/lib/redis").mkdir(parents=True, exist_ok=True)
        Path("/var/log/redis").mkdir(parents=True, exist_ok=True)
        _run(
            "redis-server",
            "--daemonize",
            "yes",
            "--bind",
            "127.0.0.1",
            "-::1",
            "--port",
            "6379",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            "/var/lib/redis",
            "--logfile",
            "/var/log/redis/ci.log",
        )
    _wait(name, up=True)


def _wait(name: str, up: bool, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while port_open(PORTS[name]) != up:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} did not go {'up' if up else 'down'}")
        time.sleep(0.2)
    if up and name == "mariadb":
        # The port opens a moment before MariaDB accepts logins.
        while (
            subprocess.run(
                ["mysqladmin", "-uroot", "-h127.0.0.1", "ping"], capture_output=True, check=False
            ).returncode
            != 0
        ):
            if time.monotonic() > deadline:
                raise TimeoutError("mariadb does not answer ping")
            time.sleep(0.2)


_PSQL = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1"]


def _plain(database: str) -> str:
    if not database.replace("_", "").isalnum():
        raise ValueError(f"not a plain database name: {database!r}")
    return database


def drop_databases(database: str) -> None:
    """Drop the PostgreSQL and MySQL databases named `database`, if they exist."""
    _run(*_PSQL, "-c", f'DROP DATABASE IF EXISTS "{_plain(database)}" WITH (FORCE)')
    _run("mysql", "-uroot", "-h127.0.0.1", "-e", f"DROP DATABASE IF EXISTS `{database}`")


def fresh_databases(database: str, redis_db: int) -> None:
    """Drop and re-create one instance's PostgreSQL and MySQL databases and empty its Redis
    database, so a test session starts from what `db init` makes of nothing, whatever an
    earlier run (another checkout, an interrupted session, a newer schema) left behind."""
    drop_databases(database)
    _run(*_PSQL, "-c", f'CREATE DATABASE "{database}"')
    _run("mysql", "-uroot", "-h127.0.0.1", "-e", f"CREATE DATABASE `{database}`")
    _run("redis-cli", "-p", "6379", "-n", str(redis_db), "FLUSHDB")


def restart_all() -> None:
    """Stop and start the three servers, with this process's environment's clock."""
    for name, port in PORTS.items():
        if port_open(port):
            stop(name)
        start(name)


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["restart"]:
        raise SystemExit("usage: python -m tests.services restart")
    restart_all()
