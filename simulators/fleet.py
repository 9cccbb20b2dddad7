"""A fleet on one machine: `hanjullo-sim fleet --nodes K --dir DIR` (docs/fleet.md).

From an empty registry it starts K simulated nodes, node N made with
`config example --instance N` (its configuration at ``DIR/node<N>/node.toml``, its daemon
run as ``hanjullo-noded --config DIR/node<N>/node.toml``) with their simulators; a central
registry database (``hanjullo_central_<first N>`` on the local PostgreSQL, made with
`hanjulloctl fleet init`, one role per node from `fleet add-node`); a test CA with a fleet
and an operator certificate under ``DIR/pki/``; and one nginx in front: one server on a
port of its own per node, each the shipped site (systemd/nginx/) with its paths moved, as
each node's own nginx would be. ``DIR/fleet.toml`` is a configuration for
`hanjulloctl fleet …` with the fleet certificate, ``DIR/operator.toml`` the same with the
operator certificate.

It prints the fleet view once every node is ``ok`` and runs until SIGTERM or SIGINT, then
stops everything it started. A daemon that dies is not restarted (on a node, that is
systemd's job); the view shows it going stale.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import grp
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg

from simulators.harness import SimulatedNode, command, wait_for

REPO = Path(__file__).resolve().parents[1]
SITE = REPO / "systemd" / "nginx" / "hanjullo-node-api.conf"
NGINX = Path("/usr/sbin/nginx")
# nginx's worker user when we run as root (Debian's nginx package creates it); otherwise
# nginx runs as whoever runs the fleet.
ROOT_PROXY_USER = "www-data"
CENTRAL_HOST = "127.0.0.1"
CENTRAL_PORT = 5432
CENTRAL_USER = "postgres"
# The CA names the shipped site maps to the two roles.
FLEET_CA = "Hanjullo fleet CA"
OPERATOR_CA = "Hanjullo operator CA"


class FleetError(RuntimeError):
    """The fleet could not be started; the message says what to do."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _q(value: object) -> str:
    return json.dumps(str(value))


def site_for(node: int, port: int, sockets: Path, tls: Path, logs: Path) -> tuple[str, str]:
    """(the shared part, node `node`'s server) of the shipped site, paths and port moved.

    The shipped file's maps and log format are http-wide: they appear once. Its upstreams
    and server are per node: the upstreams get the node's number, and the server names
    them through the role map's value with that number appended."""
    text = SITE.read_text()
    try:
        upstreams = text.index("upstream hanjullo_read {")
        after_upstreams = text.index("log_format", upstreams)
        server_at = text.index("\nserver {")
    except ValueError:
        raise FleetError(f"{SITE} changed its layout: update simulators/fleet.py") from None
    shared = text[:upstreams] + text[after_upstreams:server_at]
    server = text[upstreams:after_upstreams] + text[server_at:]
    moves = {
        "upstream hanjullo_read {": f"upstream hanjullo_read_{node} {{",
        "upstream hanjullo_control {": f"upstream hanjullo_control_{node} {{",
        "/run/hanjullo-api/": f"{sockets}/",
        "/etc/hanjullo/tls/": f"{tls}/",
        "/var/log/nginx/hanjullo-node-api.log": f"{logs}/node{node}.log",
        "listen 8443 ssl;": f"listen 127.0.0.1:{port} ssl;",
        "listen [::]:8443 ssl;": "",
        "proxy_pass http://$hanjullo_upstream;": (
            f"proxy_pass http://${{hanjullo_upstream}}_{node};"
        ),
    }
    for old, new in moves.items():
        if old not in server:
            raise FleetError(f"{SITE} no longer has {old!r}: update simulators/fleet.py")
        server = server.replace(old, new)
    return shared, server


async def _admin(database: str, *statements: str) -> None:
    conn = await asyncpg.connect(
        host=CENTRAL_HOST, port=CENTRAL_PORT, user=CENTRAL_USER, database=database, timeout=10
    )
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


class SimulatedFleet:
    def __init__(
        self,
        directory: Path,
        instances: list[int],
        heartbeat_interval_s: float = 10.0,
        overrides: Callable[[str], str] | None = None,
        with_sims: bool = True,
    ) -> None:
        """`overrides`: an edit of every node's configuration (after the fleet's own);
        `with_sims`: False runs the daemons without simulators (no agents, no phones)."""
        if not instances:
            raise FleetError("a fleet needs at least one node")
        if not NGINX.exists():
            raise FleetError(f"{NGINX} not found: apt-get install nginx (make setup does)")
        self.dir = directory.resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.instances = list(instances)
        self.heartbeat_interval_s = heartbeat_interval_s
        self.overrides = overrides
        self.with_sims = with_sims
        self.central_db = f"hanjullo_central_{instances[0]}"
        self.central_dsn = (
            f"postgresql://{CENTRAL_USER}@{CENTRAL_HOST}:{CENTRAL_PORT}/{self.central_db}"
        )
        self.fleet_toml = self.dir / "fleet.toml"
        self.operator_toml = self.dir / "operator.toml"
        self.pki = self.dir / "pki"
        self.nodes: dict[int, SimulatedNode] = {}
        self.ports: dict[int, int] = {}
        self.node_ids: dict[int, str] = {}
        self.nginx: subprocess.Popen[bytes] | None = None
        self.runtime_dir: Path | None = None
        if os.geteuid() == 0:
            try:
                account = pwd.getpwnam(ROOT_PROXY_USER)
            except KeyError:
                raise FleetError(
                    f"no user {ROOT_PROXY_USER!r} for nginx's workers (root may not be one): "
                    "apt-get install nginx creates it"
                ) from None
            self.proxy_user = account.pw_name
            self.proxy_group = grp.getgrgid(account.pw_gid).gr_name
            self.proxy_uid: int | None = account.pw_uid
            self.proxy_gid: int | None = account.pw_gid
        else:
            self.proxy_user = getpass.getuser()
            self.proxy_group = grp.getgrgid(os.getgid()).gr_name
            self.proxy_uid = self.proxy_gid = None

    # ---- pieces ---------------------------------------------------------------------------
    def ctl(self, *args: str, config: Path | None = None, timeout: float = 60) -> str:
        argv = [*command("hanjulloctl"), "--config", str(config or self.fleet_toml), *args]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if result.returncode != 0:
            raise FleetError(f"{' '.join(args)} exited {result.returncode}: {result.stderr}")
        return result.stdout

    def _make_pki(self) -> None:
        from simulators.pki import Authority, name

        self.pki.mkdir(parents=True, exist_ok=True)
        server_ca = Authority(name("Hanjullo node server CA"))
        fleet_ca = Authority(name(FLEET_CA))
        operator_ca = Authority(name(OPERATOR_CA))
        (self.pki / "server-ca.pem").write_bytes(server_ca.cert_pem)
        (self.pki / "client-cas.pem").write_bytes(fleet_ca.cert_pem + operator_ca.cert_pem)
        server_ca.issue("localhost", server=True).write(self.pki, "node")
        fleet_ca.issue("control-plane-reader").write(self.pki, "fleet")
        operator_ca.issue("fleet-operator").write(self.pki, "operator")
        for key in self.pki.glob("*.key"):
            key.chmod(0o600)

    def _write_views(self) -> None:
        for path, stem, what in (
            (self.fleet_toml, "fleet", "the fleet certificate: reads only"),
            (self.operator_toml, "operator", "the operator certificate: reads and acts"),
        ):
            path.write_text(
                f"# The simulated fleet's view (hanjullo-sim fleet), with {what}:\n"
                f"#   hanjulloctl --config {path} fleet status\n"
                "[control_plane]\n"
                f"dsn = {_q(self.central_dsn)}\n"
                f"heartbeat_interval_s = {self.heartbeat_interval_s}\n"
                f"ca = {_q(self.pki / 'server-ca.pem')}\n"
                f"client_cert = {_q(self.pki / f'{stem}.crt')}\n"
                f"client_key = {_q(self.pki / f'{stem}.key')}\n"
            )

    def _registry(self) -> None:
        """An empty registry: the central database made anew, then `fleet init`."""
        asyncio.run(
            _admin(
                "postgres",
                f'DROP DATABASE IF EXISTS "{self.central_db}" WITH (FORCE)',
                f'CREATE DATABASE "{self.central_db}"',
            )
        )
        self.ctl("fleet", "init")

    def _edit_for(self, n: int) -> Callable[[str], str]:
        def edit(text: str) -> str:
            return self._node_sections(n, text)

        return edit

    def _node_sections(self, n: int, text: str) -> str:
        node_id = tomllib.loads(text)["node"]["id"]
        self.node_ids[n] = node_id
        dsn = self.ctl("fleet", "add-node", node_id).strip()
        assert self.runtime_dir is not None
        sockets = self.runtime_dir / f"node{n}"
        text += (
            "\n# The API behind nginx and the heartbeat (hanjullo-sim fleet).\n"
            "[api]\n"
            f"proxy_user = {_q(self.proxy_user)}\n"
            f"group = {_q(self.proxy_group)}\n"
            f"read_socket = {_q(sockets / 'read.sock')}\n"
            f"control_socket = {_q(sockets / 'control.sock')}\n"
            "\n[control_plane]\n"
            f"dsn = {_q(dsn)}\n"
            f"advertise_url = {_q(f'https://127.0.0.1:{self.ports[n]}')}\n"
            f"heartbeat_interval_s = {self.heartbeat_interval_s}\n"
        )
        return self.overrides(text) if self.overrides is not None else text

    def _start_nginx(self) -> None:
        assert self.runtime_dir is not None
        prefix = self.runtime_dir / "nginx"
        tls, logs, temp = prefix / "tls", prefix / "logs", prefix / "temp"
        for sub in (tls, logs, temp):
            sub.mkdir(parents=True, exist_ok=True)
        for name in ("node.crt", "node.key", "client-cas.pem"):
            shutil.copy(self.pki / name, tls / name)
        shared = ""
        servers = []
        for n in self.instances:
            shared, server = site_for(n, self.ports[n], self.runtime_dir / f"node{n}", tls, logs)
            servers.append(server)
        (prefix / "site.conf").write_text(shared + "\n".join(servers))
        (prefix / "nginx.conf").write_text(
            f"""worker_processes 2;
pid {prefix}/nginx.pid;
error_log {logs}/error.log info;
events {{ worker_connections 256; }}
http {{
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    include {prefix}/site.conf;
}}
"""
        )
        if self.proxy_uid is not None:
            for path in [prefix, *prefix.rglob("*")]:
                os.chown(path, self.proxy_uid, self.proxy_gid or -1)
        as_user: dict[str, Any] = (
            {}
            if self.proxy_uid is None
            else {"user": self.proxy_uid, "group": self.proxy_gid, "extra_groups": []}
        )
        argv = [str(NGINX), "-p", f"{prefix}/", "-c", f"{prefix}/nginx.conf", "-e", "stderr"]
        check = subprocess.run(
            [*argv, "-t"], capture_output=True, text=True, check=False, **as_user
        )
        if check.returncode != 0:
            raise FleetError(f"nginx -t refused the fleet's site: {check.stderr}")
        self.nginx = subprocess.Popen(
            [*argv, "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=(self.dir / "nginx.stderr").open("ab"),
            start_new_session=True,
            **as_user,
        )
        nginx = self.nginx
        wait_for(
            lambda: all(port_open(p) for p in self.ports.values()) or nginx.poll() is not None,
            15,
            "nginx's ports",
        )
        if nginx.poll() is not None:
            raise FleetError(f"nginx exited: see {self.dir / 'nginx.stderr'}")

    # ---- lifecycle ------------------------------------------------------------------------
    def start(self, progress: Callable[[str], None] = lambda _: None) -> None:
        """Start everything; `progress` is told each step (starting takes a minute)."""
        # The proxy's sockets must be reachable by nginx's user: not under a private DIR.
        self.runtime_dir = Path(tempfile.mkdtemp(prefix="hanjullo-fleet-", dir="/tmp"))
        self.runtime_dir.chmod(0o711)
        progress(f"test CA, fleet and operator certificates under {self.dir / 'pki'}")
        self._make_pki()
        self._write_views()
        progress("central registry")
        self._registry()
        for n in self.instances:
            self.ports[n] = free_port()
        for n in self.instances:
            self.nodes[n] = SimulatedNode(
                self.dir / f"node{n}", instance=n, overrides=self._edit_for(n)
            )
            (self.dir / f"node{n}" / "node.toml").chmod(0o600)
        for n, node in self.nodes.items():
            progress(f"node {n}: db init")
            node.db_init()
        progress("nginx")
        self._start_nginx()
        if self.with_sims:
            for n, node in self.nodes.items():
                progress(f"node {n}: simulators")
                node.start_sim()
        for n, node in self.nodes.items():
            progress(f"node {n}: daemon")
            node.start_daemon(wait_ready_s=30)

    def view(self, timeout_s: float = 10.0, config: Path | None = None) -> dict[str, Any]:
        """`hanjulloctl fleet status --json`, parsed."""
        out = self.ctl("fleet", "status", "--json", "--timeout", str(timeout_s), config=config)
        result: dict[str, Any] = json.loads(out)
        return result

    def wait_all_ok(self, timeout_s: float = 120.0) -> dict[str, Any]:
        """The fleet view once every node is `ok` (and registered)."""
        wanted = set(self.node_ids.values())

        def all_ok() -> dict[str, Any] | None:
            view = self.view()
            states = {n["id"]: n["state"] for n in view["nodes"]}
            if set(states) >= wanted and all(states[i] == "ok" for i in wanted):
                return view
            return None

        result: dict[str, Any] = wait_for(all_ok, timeout_s, "every node ok", interval_s=0.5)
        return result

    def close(self) -> None:
        for node in self.nodes.values():
            with contextlib.suppress(Exception):
                node.close()
        if self.nginx is not None:
            proc, self.nginx = self.nginx, None
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # The node roles are the cluster's, not the database's: leave none behind.
        for node_id in self.node_ids.values():
            with contextlib.suppress(Exception):
                self.ctl("fleet", "remove-node", node_id, timeout=20)
        if self.runtime_dir is not None:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
            self.runtime_dir = None

    def __enter__(self) -> SimulatedFleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="hanjullo-sim fleet",
        description="K simulated nodes, a central registry and one nginx in front",
    )
    parser.add_argument("--nodes", type=int, required=True, help="how many nodes (K)")
    parser.add_argument("--dir", type=Path, required=True, help="where everything is kept")
    parser.add_argument(
        "--first-instance",
        type=int,
        default=1,
        help="node numbers N (config example --instance N) start here (default 1)",
    )
    parser.add_argument(
        "--heartbeat-interval", type=float, default=10.0, help="seconds (default 10)"
    )
    args = parser.parse_args(argv)
    if args.nodes < 1:
        parser.error("--nodes must be at least 1")
    stop = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    fleet = SimulatedFleet(
        args.dir,
        list(range(args.first_instance, args.first_instance + args.nodes)),
        heartbeat_interval_s=args.heartbeat_interval,
    )
    try:
        fleet.start(lambda step: print(f"starting: {step}", file=sys.stderr, flush=True))
        if stop:
            return 0
        print("waiting for every node's first heartbeat", file=sys.stderr, flush=True)
        fleet.wait_all_ok(timeout_s=max(60.0, 6 * args.heartbeat_interval))
        print(fleet.ctl("fleet", "status"), end="", flush=True)
        print(
            f"fleet of {args.nodes} running; hanjulloctl --config {fleet.fleet_toml} fleet "
            "status | place | targets; SIGTERM or Ctrl-C stops it",
            file=sys.stderr,
            flush=True,
        )
        while not stop:
            time.sleep(0.2)
        print("stopping the fleet", file=sys.stderr, flush=True)
        return 0
    except (FleetError, TimeoutError, OSError, asyncpg.PostgresError) as exc:
        print(f"hanjullo-sim fleet: {exc}", file=sys.stderr)
        return 1
    finally:
        fleet.close()
