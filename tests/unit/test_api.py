"""The control plane's API without a node: the proxy sockets' roles, the request shapes the
routes accept, the shipped nginx site's rules, and the ports of numbered simulated nodes."""

from __future__ import annotations

import asyncio
import grp
import json
import os
import re
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from config.example import MAX_INSTANCE, sim_example, sim_port_base
from config.loader import ConfigError, validate
from daemon.api import BadRequest, runs_filter, spam_test_specs
from daemon.http import (
    Peer,
    ProxyRoles,
    Request,
    Response,
    SharedSocketDirectory,
    UnixHTTPServer,
)

SITE = Path(__file__).resolve().parents[2] / "systemd" / "nginx" / "hanjullo-node-api.conf"
NGINX_UID = 33
ACCOUNTS = {"www-data": SimpleNamespace(pw_uid=NGINX_UID)}


def proxy_roles(controls: bool, user: str = "www-data") -> ProxyRoles:
    return ProxyRoles(user, controls=controls, getpwnam=lambda name: ACCOUNTS[name])


def request(method: str, uid: int, path: str = "/v1/agents/3/drain") -> Request:
    return Request(method, path, "", b"", Peer(100, uid, uid))


# ---- the proxy sockets' roles ---------------------------------------------------------------
def test_the_read_socket_serves_nginxs_user_reads_and_nothing_else() -> None:
    read = proxy_roles(controls=False)
    assert read.refused(request("GET", NGINX_UID, "/v1/status")) is None
    refused = read.refused(request("POST", NGINX_UID))
    assert refused is not None and refused["socket"] == "read"
    assert "only reads" in refused["error"] and "operator certificate" in refused["error"]


def test_the_control_socket_serves_nginxs_user_every_route() -> None:
    control = proxy_roles(controls=True)
    assert control.refused(request("POST", NGINX_UID)) is None
    assert control.refused(request("GET", NGINX_UID, "/v1/status")) is None


@pytest.mark.parametrize("controls", [False, True])
def test_no_other_local_user_is_served_on_either_proxy_socket(controls: bool) -> None:
    roles = proxy_roles(controls)
    for method in ("GET", "POST"):
        refused = roles.refused(request(method, 1000))
        assert refused is not None
        assert "serves nginx's user 'www-data' only, not uid 1000" in refused["error"]
    # Root needs no proxy, but is not refused one: it gets what the socket grants.
    assert roles.refused(request("GET", 0, "/v1/status")) is None
    assert (roles.refused(request("POST", 0)) is None) is controls
    # A peer whose credentials cannot be read is nobody's.
    assert roles.refused(Request("GET", "/v1/status", "", b"", Peer(0, -1, -1))) is not None


def test_a_proxy_user_missing_from_the_host_serves_no_one() -> None:
    refused = proxy_roles(True, user="nginx").refused(request("GET", NGINX_UID, "/v1/status"))
    assert refused is not None and "proxy_user 'nginx' does not exist" in refused["error"]


async def test_a_proxy_socket_takes_the_client_header_counts_answers_and_refuses_403(
    tmp_path: Path,
) -> None:
    seen: list[Request] = []
    answers: list[tuple[str, int]] = []

    async def handler(req: Request) -> Response:
        seen.append(req)
        return Response.json({"ok": True})

    # This process is "nginx's user" for the read socket: its own uid.
    me = os.getuid()
    srv = UnixHTTPServer(
        tmp_path / "read.sock",
        {("GET", "/v1/status"): handler, ("POST", "/v1/agents/*"): handler},
        roles=ProxyRoles("me", controls=False, getpwnam=lambda _: SimpleNamespace(pw_uid=me)),
        name="read",
        client_header="X-Hanjullo-Client",
        observer=lambda socket, status: answers.append((socket, status)),
    )
    await srv.start()
    try:
        status, body = await exchange(
            srv.path,
            b"GET /v1/status HTTP/1.1\r\nHost: a\r\nX-Hanjullo-Client: CN=ops,O=H\r\n\r\n",
        )
        assert status == 200 and seen[0].client == "CN=ops,O=H"
        status, body = await exchange(
            srv.path, b"POST /v1/agents/3/drain HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"
        )
        assert status == 403 and body["socket"] == "read" and body["status"] == 403
        assert len(seen) == 1 and answers == [("read", 200), ("read", 403)]
    finally:
        await srv.close()


async def test_a_proxy_socket_gives_its_own_directory_its_group_and_never_a_shared_one(
    tmp_path: Path,
) -> None:
    group = grp.getgrgid(os.getgid()).gr_name
    own = tmp_path / "api"
    own.mkdir(mode=0o755)
    srv = UnixHTTPServer(own / "read.sock", {}, group=group, directory_group=True)
    await srv.start()
    try:
        assert oct(own.stat().st_mode & 0o777) == oct(0o750)
        assert oct(srv.path.stat().st_mode & 0o777) == oct(0o660)
    finally:
        await srv.close()
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    refused = UnixHTTPServer(shared / "read.sock", {}, group=group, directory_group=True)
    with pytest.raises(SharedSocketDirectory, match="not a directory of this daemon's own"):
        await refused.start()
    assert oct(shared.stat().st_mode & 0o7777) == oct(0o1777)
    assert not (shared / "read.sock").exists()


async def test_the_status_socket_ignores_the_client_header(tmp_path: Path) -> None:
    seen: list[Request] = []

    async def handler(req: Request) -> Response:
        seen.append(req)
        return Response.json({})

    srv = UnixHTTPServer(tmp_path / "s.sock", {("GET", "/v1/status"): handler})
    await srv.start()
    try:
        await exchange(
            srv.path, b"GET /v1/status HTTP/1.1\r\nHost: a\r\nX-Hanjullo-Client: CN=x\r\n\r\n"
        )
        assert seen[0].client == ""
    finally:
        await srv.close()


async def exchange(path: Path, raw: bytes) -> tuple[int, dict[str, object]]:
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(raw)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = int(re.search(rb"content-length: (\d+)", head, re.I)[1])  # type: ignore[index]
    body = await reader.readexactly(length)
    writer.close()
    await writer.wait_closed()
    return int(head.split(b" ")[1]), json.loads(body)


# ---- request shapes -------------------------------------------------------------------------
def test_a_spam_test_body_becomes_one_test_or_a_batch_of_variants() -> None:
    [one] = spam_test_specs("n1", {"callback": "0212345678", "message": "안녕", "company": "c"})
    assert (one.callback, one.sms_text, one.lms_text, one.company_id, one.variant) == (
        "0212345678",
        "안녕",
        None,
        "c",
        None,
    )
    batch = spam_test_specs(
        "n1",
        {"callback": "0212345678", "messages": ["a", "b"], "lms": True, "subject": "제목"},
    )
    assert [(s.variant, s.lms_text, s.sms_text, s.subject) for s in batch] == [
        ("A", "a", None, "제목"),
        ("B", "b", None, "제목"),
    ]
    run = uuid.uuid4()
    [linked] = spam_test_specs(
        "n1", {"callback": "0212345678", "message": "x", "run_id": str(run), "source": "auto_ai"}
    )
    assert (linked.run_id, linked.source, linked.node_id) == (run, "auto_ai", "n1")


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"message": "x"}, "callback is required"),
        ({"callback": "0212345678"}, "message (the text to test)"),
        ({"callback": "0212345678", "message": "x", "messages": ["y"]}, "not both"),
        ({"callback": "0212345678", "messages": []}, "non-empty list"),
        ({"callback": "0212345678", "message": 5}, "message must be a string"),
        ({"callback": "0212345678", "message": "x", "lms": True}, "needs a subject"),
        ({"callback": "0212345678", "message": "x", "lms": "yes"}, "lms must be true or false"),
        ({"callback": "0212345678", "message": "x", "source": "canary"}, "source must be"),
        ({"callback": "0212345678", "message": "x", "run_id": "r1"}, "run_id must be"),
        ({"callback": "0212345678", "message": "x", "colour": "red"}, "unknown field(s) colour"),
    ],
)
def test_a_bad_spam_test_body_is_refused_naming_the_field(
    body: dict[str, object], says: str
) -> None:
    with pytest.raises(BadRequest, match=re.escape(says)):
        spam_test_specs("n1", body)


def listing(query: str) -> dict[str, object]:
    return runs_filter(Request("GET", "/v1/runs", query, b""))


def test_the_runs_list_filters() -> None:
    campaign = uuid.uuid4()
    assert listing(f"company=c1&campaign={campaign}&status=paused,queued&limit=5") == {
        "company_id": "c1",
        "campaign_id": campaign,
        "statuses": ("paused", "queued"),
        "limit": 5,
    }
    assert listing("") == {"company_id": None, "statuses": (), "limit": 100}


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("status=sent", "status sent is not a run status"),
        ("limit=0", "limit must be 1-1000"),
        ("limit=5000", "limit must be 1-1000"),
        ("campaign=abc", "campaign must be a campaign id"),
        ("company=a&company=b", "give company once"),
        ("node=x", "unknown query field(s) node"),
    ],
)
def test_a_bad_runs_filter_is_refused_naming_the_field(query: str, says: str) -> None:
    with pytest.raises(BadRequest, match=re.escape(says)):
        listing(query)


# ---- the [api] settings -----------------------------------------------------------------------
def _with_api(tmp_path: Path, api: dict[str, str]) -> None:
    import tomllib

    raw = tomllib.loads(sim_example(tmp_path))
    raw["api"] = api
    validate(raw)


def test_api_settings_refuse_root_as_the_proxy_and_one_socket_for_both_roles(
    tmp_path: Path,
) -> None:
    _with_api(tmp_path, {"proxy_user": "www-data"})
    with pytest.raises(ConfigError, match="must not run as root"):
        _with_api(tmp_path, {"proxy_user": "root"})
    with pytest.raises(ConfigError, match="must differ"):
        _with_api(tmp_path, {"read_socket": "/run/x.sock", "control_socket": "/run/x.sock"})
    # Beside the status socket, the daemon would lock its readers out of the directory.
    beside = str(tmp_path.resolve() / "control.sock")
    with pytest.raises(ConfigError, match="a directory of their own"):
        _with_api(tmp_path, {"proxy_user": "www-data", "control_socket": beside})
    _with_api(tmp_path, {"control_socket": beside})  # no proxy_user: no proxy sockets


# ---- the shipped nginx site -------------------------------------------------------------------
def test_the_nginx_site_gives_roles_by_exact_verified_issuer_and_routes_to_known_upstreams() -> (
    None
):
    text = SITE.read_text()
    maps = {var: body for _, var, body in re.findall(r'map "([^"]+)" (\$\w+) \{([^}]*)\}', text)}
    role_map, upstream_map = maps["$hanjullo_role"], maps["$hanjullo_upstream"]
    entries = [line.strip() for line in role_map.strip().splitlines() if line.strip()]
    # No regular expression (~), no wildcard: whole strings, and only verified certificates.
    assert all(not e.startswith("~") and "*" not in e for e in entries)
    keyed = [e for e in entries if not e.startswith("default")]
    assert keyed and all(e.startswith('"SUCCESS CN=') for e in keyed)
    assert 'default "";' in entries
    upstreams = set(re.findall(r"^upstream (\w+) \{", text, re.M))
    targets = set(re.findall(r'"\w+ [A-Z]+" (\w+);', upstream_map))
    assert targets == upstreams == {"hanjullo_read", "hanjullo_control"}
    # Only an operator's POST goes to the control socket.
    assert re.findall(r'"(\w+ [A-Z]+)" hanjullo_control;', upstream_map) == ["operator POST"]
    assert "ssl_verify_client on;" in text
    # No CA between a client's certificate and a trusted one: a sub-CA of the fleet CA
    # named like the operator CA would otherwise issue operators.
    assert re.findall(r"^\s*ssl_verify_depth (\d+);", text, re.M) == ["0"]


# ---- numbered simulated nodes -----------------------------------------------------------------
def test_every_instance_has_admin_ports_no_other_instance_or_directory_uses(tmp_path: Path) -> None:
    blocks = {n: sim_port_base(tmp_path, n) for n in range(1, MAX_INSTANCE + 1)}
    ports = {n: set(range(base + 1, base + 12)) for n, base in blocks.items()}
    every = [port for block in ports.values() for port in block]
    assert len(every) == len(set(every))
    # Directories hash into blocks below 32000; the instances' are above those and below
    # the ephemeral ports (32768).
    assert all(sim_port_base(tmp_path / str(i)) + 11 < 32_000 for i in range(200))
    assert min(min(p) for p in ports.values()) > 32_000
    assert max(max(p) for p in ports.values()) < 32_768
    # Whatever directory node N lives in.
    assert sim_port_base(tmp_path / "a", 3) == sim_port_base(tmp_path / "b", 3)
