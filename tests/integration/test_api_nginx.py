"""The control plane's API through the real Debian nginx and mutual TLS (issue 19).

One nginx and one simulated node for the whole module. nginx runs unprivileged, as a
user of its own (``hjtest-nginx``), from a prefix in /tmp on a free high port, with the
site file shipped in systemd/nginx/ (only its paths moved to the test's). The PKI is made
here (tests/pki.py). Whether a request reached the node is read from the node's own
counter of answers per socket (``hanjullo_api_requests_total``), on its status socket.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from config.clock import KST
from config.names import MessageType
from dispatch.runs import Recipient, RunSpec, create_run
from simulators.harness import SimulatedNode, wait_for
from tests.config_edits import settings
from tests.integration.conftest import FAST_NETWORK
from tests.integration.helpers import pg_fetch
from tests.integration.test_socket import as_user
from tests.pki import Authority, Issued, name

REPO = Path(__file__).resolve().parents[2]
SITE = REPO / "systemd" / "nginx" / "hanjullo-node-api.conf"
NGINX = Path("/usr/sbin/nginx")
PROXY_USER = "hjtest-nginx"
# A local user who is neither nginx's nor an operator (Debian's own).
OTHER_USER = "nobody"
CALLBACK = "0212345678"


@dataclass
class Pki:
    server_ca: Path
    server_authority: Authority
    fleet: Issued
    operator: Issued
    # Issued by a CA nobody trusts, and by one that carries the operator CA's very name.
    stranger: Issued
    impostor: Issued
    # Below a sub-CA of the fleet CA: one named like the operator CA, one named otherwise.
    escalator: Issued
    sub_fleet: Issued
    dir: Path


@dataclass
class Proxy:
    port: int
    pki: Pki
    node: SimulatedNode
    prefix: Path
    sockets: Path
    nginx: subprocess.Popen[bytes]


def _ensure_proxy_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(PROXY_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                PROXY_USER,
            ],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(PROXY_USER)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _site(sockets: Path, tls: Path, logs: Path, port: int) -> str:
    """The shipped site with its paths and port moved to the test's; each must be there."""
    text = SITE.read_text()
    moves = {
        "/run/hanjullo-api/": f"{sockets}/",
        "/etc/hanjullo/tls/": f"{tls}/",
        "/var/log/nginx/": f"{logs}/",
        "listen 8443 ssl;": f"listen 127.0.0.1:{port} ssl;",
        "listen [::]:8443 ssl;": "",
    }
    for old, new in moves.items():
        assert old in text, f"{SITE} no longer has {old!r}: update this test's moves"
        text = text.replace(old, new)
    return text


def _pki(directory: Path) -> Pki:
    server_ca = Authority(name("Hanjullo node server CA"))
    # The CA names the shipped site maps to its two roles. The fleet CA has no limit on the
    # CAs below it, as a fleet's CA often has not.
    fleet_ca = Authority(name("Hanjullo fleet CA"), path_length=None)
    operator_ca = Authority(name("Hanjullo operator CA"))
    server_ca.issue("localhost", server=True).write(directory, "node")
    (directory / "client-cas.pem").write_bytes(fleet_ca.cert_pem + operator_ca.cert_pem)
    ca_file = directory / "server-ca.pem"
    ca_file.write_bytes(server_ca.cert_pem)
    pki = Pki(
        server_ca=ca_file,
        server_authority=server_ca,
        fleet=fleet_ca.issue("control-plane-reader"),
        operator=operator_ca.issue("ops-alice"),
        stranger=Authority(name("Some other CA")).issue("ops-alice"),
        impostor=Authority(name("Hanjullo operator CA")).issue("ops-alice"),
        escalator=Authority(name("Hanjullo operator CA"), parent=fleet_ca).issue("mallory"),
        sub_fleet=Authority(name("Fleet sub CA"), parent=fleet_ca).issue("sub-reader"),
        dir=directory,
    )
    return pki


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    if os.geteuid() != 0:
        pytest.skip("running nginx as a user of its own needs root")
    if not NGINX.exists():
        pytest.fail("nginx is not installed: make setup installs it (apt-get install nginx)")
    account = _ensure_proxy_user()
    # Directories nginx's user can reach (a test's tmp_path is root's alone).
    prefix = Path(tempfile.mkdtemp(prefix="hanjullo-nginx-", dir="/tmp"))
    sockets = Path(tempfile.mkdtemp(prefix="hanjullo-api-", dir="/tmp"))
    tls = prefix / "tls"
    for sub in (tls, prefix / "logs", prefix / "temp"):
        sub.mkdir()
    pki = _pki(tls)
    port = _free_port()
    (prefix / "site.conf").write_text(_site(sockets, tls, prefix / "logs", port))
    (prefix / "nginx.conf").write_text(
        f"""worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log info;
events {{ worker_connections 64; }}
http {{
    client_body_temp_path {prefix}/temp/body;
    proxy_temp_path {prefix}/temp/proxy;
    fastcgi_temp_path {prefix}/temp/fastcgi;
    uwsgi_temp_path {prefix}/temp/uwsgi;
    scgi_temp_path {prefix}/temp/scgi;
    include {prefix}/site.conf;
}}
"""
    )
    shutil.chown(prefix, PROXY_USER, PROXY_USER)
    for path in prefix.rglob("*"):
        shutil.chown(path, PROXY_USER, PROXY_USER)
    check = subprocess.run(
        [str(NGINX), "-t", "-p", f"{prefix}/", "-c", f"{prefix}/nginx.conf", "-e", "stderr"],
        check=False,
        capture_output=True,
        text=True,
        user=account.pw_uid,
        group=account.pw_gid,
        extra_groups=[],
    )
    assert check.returncode == 0, check.stderr

    node = SimulatedNode(
        tmp_path_factory.mktemp("api-node"),
        overrides=lambda text: settings(
            text,
            {
                **FAST_NETWORK,
                "api": {
                    "proxy_user": PROXY_USER,
                    "group": PROXY_USER,
                    "read_socket": str(sockets / "read.sock"),
                    "control_socket": str(sockets / "control.sock"),
                },
            },
        ),
    )
    nginx: subprocess.Popen[bytes] | None = None
    try:
        node.db_init()
        node.start_sim()
        node.start_daemon()
        node.wait_components(
            lambda s: s.get("api-sockets") == "running" and s.get("postgres") == "running",
            20,
            "the proxy sockets and PostgreSQL",
        )
        nginx = subprocess.Popen(
            [
                str(NGINX),
                "-p",
                f"{prefix}/",
                "-c",
                f"{prefix}/nginx.conf",
                "-e",
                f"{prefix}/logs/error.log",
                "-g",
                "daemon off;",
            ],
            user=account.pw_uid,
            group=account.pw_gid,
            extra_groups=[],
            stdout=subprocess.DEVNULL,
            stderr=(prefix / "logs" / "nginx.stderr").open("ab"),
            start_new_session=True,
        )
        wait_for(lambda: _port_open(port) or nginx.poll() is not None, 10, "nginx's port")
        assert nginx.poll() is None, (prefix / "logs" / "error.log").read_text()
        yield Proxy(port=port, pki=pki, node=node, prefix=prefix, sockets=sockets, nginx=nginx)
    finally:
        if nginx is not None:
            nginx.terminate()
            try:
                nginx.wait(10)
            except subprocess.TimeoutExpired:
                nginx.kill()
                nginx.wait()
        node.close()
        shutil.rmtree(prefix, ignore_errors=True)
        shutil.rmtree(sockets, ignore_errors=True)


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any
    content_type: str


def _context(proxy: Proxy, cert: Issued | None) -> ssl.SSLContext:
    """A client's TLS: it trusts the node's CA and holds `cert` (None: no certificate)."""
    context = ssl.create_default_context(cafile=str(proxy.pki.server_ca))
    if cert is not None:
        stem = f"client-{cert.cert.serial_number}"
        if not (proxy.pki.dir / f"{stem}.crt").exists():
            cert.write(proxy.pki.dir, stem)
        context.load_cert_chain(proxy.pki.dir / f"{stem}.crt", proxy.pki.dir / f"{stem}.key")
    return context


def call(proxy: Proxy, method: str, path: str, cert: Issued | None, body: Any = None) -> Answer:
    """One HTTPS request through nginx, as a client holding `cert` (None: no certificate)."""
    context = _context(proxy, cert)
    conn = http.client.HTTPSConnection("127.0.0.1", proxy.port, context=context, timeout=30)
    try:
        payload = None if body is None else json.dumps(body, ensure_ascii=False).encode()
        headers = {} if payload is None else {"content-type": "application/json"}
        conn.request(method, path, body=payload, headers=headers)
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    content_type = response.getheader("content-type") or ""
    parsed: Any = raw.decode()
    if "json" in content_type:
        parsed = json.loads(raw)
    return Answer(response.status, parsed, content_type)


def answered(proxy: Proxy) -> dict[str, float]:
    """The node's answers so far per proxy socket, read on its status socket."""
    conn = _UnixConnection(proxy.node.dir / "node.sock")
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    counts = {"read": 0.0, "control": 0.0}
    pattern = re.compile(r'^hanjullo_api_requests_total\{socket="(\w+)",status="\d+"\} (\S+)$')
    for line in text.splitlines():
        match = pattern.match(line)
        if match and match[1] in counts:
            counts[match[1]] += float(match[2])
    return counts


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=10)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(self.path))


def _scheduled_run(
    node: SimulatedNode, company: str, node_id: str | None = None
) -> tuple[uuid.UUID, uuid.UUID]:
    """A run of one recipient for tomorrow (it waits, so it can be paused): (run, campaign).
    `node_id`: a run for another node in the same database."""
    campaign = uuid.uuid4()
    config = node.status_config()
    spec = RunSpec(
        node_id=node_id or config["node"]["id"],
        company_id=company,
        callback=CALLBACK,
        message_type=MessageType.SMS,
        scheduled_at=datetime.now(KST) + timedelta(days=1),
        campaign_id=campaign,
    )

    async def create() -> uuid.UUID:
        conn = await asyncpg.connect(
            host="127.0.0.1", user="postgres", database=config["postgres"]["database"]
        )
        try:
            return await create_run(conn, spec, [Recipient("01012345678", "API 시험 문자")])
        finally:
            await conn.close()

    return asyncio.run(create()), campaign


# ---- acceptance 1 --------------------------------------------------------------------------
def test_a_fleet_certificate_reads_and_is_refused_a_control_by_nginx(proxy: Proxy) -> None:
    run_id, _ = _scheduled_run(proxy.node, "api-co-fleet")
    status = call(proxy, "GET", "/v1/status", proxy.pki.fleet)
    assert status.status == 200 and status.body["node"]["id"].startswith("sim-")
    wait_for(
        lambda: (
            str(run_id)
            in {r["run_id"] for r in call(proxy, "GET", "/v1/status", proxy.pki.fleet).body["runs"]}
        ),
        15,
        "the run in /v1/status runs (by run_id)",
    )
    metrics = call(proxy, "GET", "/metrics", proxy.pki.fleet)
    assert metrics.status == 200 and "hanjullo_uptime_seconds" in metrics.body

    before = answered(proxy)
    refused = call(proxy, "POST", f"/v1/runs/{run_id}/pause", proxy.pki.fleet)
    assert refused.status == 403 and "application/json" in refused.content_type
    assert refused.body["status"] == 403 and refused.body["role"] == "fleet"
    assert refused.body["error"] == (
        "POST refused: a fleet certificate may only read (GET); controls need an operator "
        "certificate"
    )
    # nginx answered it: neither of the node's proxy sockets saw the request.
    assert answered(proxy) == before
    shown = call(proxy, "GET", f"/v1/runs/{run_id}", proxy.pki.fleet)
    assert shown.status == 200 and shown.body["status"] == "queued"


def test_an_operator_certificate_pauses_and_resumes_a_run(proxy: Proxy) -> None:
    run_id, campaign = _scheduled_run(proxy.node, "api-co-ops")
    before = answered(proxy)
    paused = call(proxy, "POST", f"/v1/runs/{run_id}/pause", proxy.pki.operator)
    assert paused.status == 200 and paused.body["status"] == "paused", paused.body
    assert answered(proxy)["control"] == before["control"] + 1
    # Read back through the API, by run id and by campaign id, and in the company's list.
    assert call(proxy, "GET", f"/v1/runs/{run_id}", proxy.pki.fleet).body["status"] == "paused"
    by_campaign = call(proxy, "GET", f"/v1/runs/{campaign}", proxy.pki.fleet).body
    assert by_campaign["run_id"] == str(run_id) and by_campaign["campaign_id"] == str(campaign)
    listed = call(proxy, "GET", "/v1/runs?company=api-co-ops", proxy.pki.fleet).body
    assert [(r["run_id"], r["status"]) for r in listed["runs"]] == [(str(run_id), "paused")]
    resumed = call(proxy, "POST", f"/v1/runs/{run_id}/resume", proxy.pki.operator)
    assert resumed.status == 200 and resumed.body == {
        "run_id": str(run_id),
        "status": "queued",
        "resumed": True,
    }
    assert call(proxy, "GET", f"/v1/runs/{run_id}", proxy.pki.fleet).body["status"] == "queued"
    # Who acted is in the daemon's log, as the certificate's subject nginx vouched for.
    wait_for(
        lambda: "CN=ops-alice,O=Hanjullo" in _daemon_log(proxy.node),
        5,
        "the control logged with the operator certificate's subject",
    )
    # Another node's run in the same database is not this node's to show or steer.
    foreign, foreign_campaign = _scheduled_run(proxy.node, "api-co-ops", node_id="sim-elsewhere")
    for ident in (foreign, foreign_campaign):
        assert call(proxy, "GET", f"/v1/runs/{ident}", proxy.pki.fleet).status == 404
    again = call(proxy, "GET", "/v1/runs?company=api-co-ops", proxy.pki.fleet).body["runs"]
    assert [r["run_id"] for r in again] == [str(run_id)]
    assert call(proxy, "POST", f"/v1/runs/{foreign}/pause", proxy.pki.operator).status == 404
    drained = call(proxy, "POST", "/v1/agents/9/drain", proxy.pki.operator)
    assert drained.status == 200 and drained.body == {"agent": 9, "drained": True}
    undrained = call(proxy, "POST", "/v1/agents/9/undrain", proxy.pki.operator)
    assert undrained.status == 200 and undrained.body == {"agent": 9, "drained": False}


def _daemon_log(node: SimulatedNode) -> str:
    return "".join(p.read_text(errors="replace") for p in (node.dir / "logs").glob("*"))


@pytest.mark.parametrize("who", ["none", "stranger", "impostor", "escalator", "sub_fleet"])
def test_no_certificate_or_another_cas_never_reaches_the_node(proxy: Proxy, who: str) -> None:
    cert = None if who == "none" else getattr(proxy.pki, who)
    before = answered(proxy)
    for method, path in (("GET", "/v1/status"), ("POST", "/v1/agents/9/drain")):
        try:
            answer = call(proxy, method, path, cert)
        except (ssl.SSLError, ConnectionError):
            continue  # a failed handshake refuses it as well
        assert answer.status == 400, answer
        assert answer.body["status"] == 400 and "client certificate" in answer.body["error"]
    assert answered(proxy) == before


def test_only_nginxs_user_reaches_the_proxy_sockets(proxy: Proxy) -> None:
    """Another local user cannot connect (the files' group), and were the files opened
    to everyone the daemon would still refuse (SO_PEERCRED against [api] proxy_user)."""
    control = proxy.sockets / "control.sock"
    assert oct(control.stat().st_mode & 0o777) == oct(0o660)
    assert oct(proxy.sockets.stat().st_mode & 0o777) == oct(0o750)

    def drain_as_other() -> int:
        conn = _UnixConnection(control)
        try:
            conn.request("POST", "/v1/agents/9/drain", body=b"")
            response = conn.getresponse()
            body = json.loads(response.read())
            print(response.status, body["error"])
        except PermissionError:
            print("EACCES")
        finally:
            conn.close()
        return 0

    assert as_user(OTHER_USER, drain_as_other).stdout.strip() == "EACCES"
    proxy.sockets.chmod(0o755)
    control.chmod(0o666)
    try:
        outcome = as_user(OTHER_USER, drain_as_other).stdout.strip()
    finally:
        control.chmod(0o660)
        proxy.sockets.chmod(0o750)
    assert outcome.startswith("403 ") and f"serves nginx's user '{PROXY_USER}' only" in outcome


# ---- acceptance 2 --------------------------------------------------------------------------
def test_a_spam_test_created_by_an_operator_runs_and_its_verdicts_are_read_back(
    proxy: Proxy,
) -> None:
    spec = {"callback": CALLBACK, "message": "한줄로 API 스팸 시험", "company": "api-co-spam"}
    refused = call(proxy, "POST", "/v1/spam-tests", proxy.pki.fleet, spec)
    assert refused.status == 403
    created = call(proxy, "POST", "/v1/spam-tests", proxy.pki.operator, spec)
    assert created.status == 201, created.body
    test_id = created.body["test_id"]
    deadline = time.monotonic() + 60
    while True:
        report = call(proxy, "GET", f"/v1/spam-tests/{test_id}", proxy.pki.fleet)
        assert report.status == 200
        if report.body["status"] == "completed" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert report.body["status"] == "completed", report.body
    # A simulated node made the unknown company code a web company: the test is its.
    ((company,),) = pg_fetch("SELECT id::text FROM companies WHERE company_code = 'api-co-spam'")
    assert report.body["test_id"] == test_id and report.body["company"] == company
    assert report.body["web"] is True
    # The simulated carriers deliver everything: each phone received it, so each passed.
    verdicts = {c: v["verdict"] for c, v in report.body["carriers"].items()}
    assert verdicts == {"SKT": "pass", "KT": "pass", "LGU": "pass"}
    assert report.body["overall"] == "pass"
    unknown = call(proxy, "GET", f"/v1/spam-tests/{uuid.uuid4()}", proxy.pki.fleet)
    assert unknown.status == 404 and "no spam test or batch" in unknown.body["error"]
    bad = call(proxy, "POST", "/v1/spam-tests", proxy.pki.operator, {"message": "x"})
    assert bad.status == 400 and "callback is required" in bad.body["error"]


# ---- certificate rotation --------------------------------------------------------------------
def _served_certificate(proxy: Proxy) -> bytes:
    context = _context(proxy, proxy.pki.fleet)
    with (
        socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return der


def test_certificates_and_a_new_operator_ca_are_rotated_by_a_reload_without_refusing_anyone(
    proxy: Proxy,
) -> None:
    """systemd/nginx/README.md's procedure: new files moved into place, the new CA's exact
    subject added to the role map, a reload; requests keep being served throughout."""
    from cryptography.hazmat.primitives import serialization

    tls = proxy.pki.dir
    new_server = proxy.pki.server_authority.issue("localhost", server=True)
    new_ca = Authority(name("Hanjullo operator CA 2027"))
    new_operator = new_ca.issue("ops-bob")
    assert call(proxy, "POST", "/v1/agents/9/undrain", new_operator).status == 400

    failures: list[str] = []
    served = 0
    stop = threading.Event()

    def keep_reading() -> None:
        nonlocal served
        while not stop.is_set():
            try:
                answer = call(proxy, "GET", "/v1/status", proxy.pki.fleet)
                if answer.status != 200:
                    failures.append(f"{answer.status} {answer.body}")
                served += 1
            except (OSError, http.client.HTTPException) as exc:
                failures.append(repr(exc))

    reader = threading.Thread(target=keep_reading)
    reader.start()
    try:
        for stem, data in (
            ("node.crt", new_server.cert_pem),
            ("node.key", new_server.key_pem),
            ("client-cas.pem", (tls / "client-cas.pem").read_bytes() + new_ca.cert_pem),
        ):
            staged = tls / f"{stem}.new"
            staged.write_bytes(data)
            shutil.chown(staged, PROXY_USER, PROXY_USER)
            staged.rename(tls / stem)
        site = proxy.prefix / "site.conf"
        text = site.read_text()
        line = '    "SUCCESS CN=Hanjullo operator CA,O=Hanjullo" operator;\n'
        assert line in text
        site.write_text(
            text.replace(
                line, line + '    "SUCCESS CN=Hanjullo operator CA 2027,O=Hanjullo" operator;\n'
            )
        )
        proxy.nginx.send_signal(signal.SIGHUP)
        try:
            wait_for(
                lambda: call(proxy, "POST", "/v1/agents/9/undrain", new_operator).status == 200,
                10,
                "the new operator CA accepted after the reload",
            )
        except TimeoutError as exc:
            log = (proxy.prefix / "logs" / "error.log").read_text()
            notes = [line for line in log.splitlines() if "[info]" not in line]
            raise AssertionError(f"{exc}; nginx says: {notes[-12:]}") from None
        time.sleep(0.3)  # a few more reads after the reload, by the reader thread
    finally:
        stop.set()
        reader.join(10)
    assert failures == [] and served > 0
    assert _served_certificate(proxy) == new_server.cert.public_bytes(serialization.Encoding.DER)
    # The old CAs still work, and nginx never restarted.
    assert call(proxy, "POST", "/v1/agents/9/undrain", proxy.pki.operator).status == 200
    assert proxy.nginx.poll() is None
