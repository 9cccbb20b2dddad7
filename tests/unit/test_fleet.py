"""The fleet's pure parts (issue 20): the headroom verdict, placement, staleness, the view's
rows and totals, Prometheus targets, DSNs, the `[control_plane]` section and the nginx site
a simulated fleet is given. The real registry, nginx and daemons: tests/integration/test_fleet.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import ssl
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from rich.cells import cell_len

from config.example import sim_example
from config.loader import ConfigError, daemon_problems, load_control_plane, validate
from config.model import ControlPlaneSection
from daemon import capacity, registry
from daemon.cli import fleet
from daemon.controlplane import ControlPlane, inputs_of
from daemon.runtime import Runtime
from daemon.stores import PostgresKeeper
from daemon.supervisor import ComponentState, Health
from simulators import pki
from simulators.fleet import site_for

NOW = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)


def _capacity(held_now: list[bool], free_hour: float = 1.0, **extra: Any) -> dict[str, Any]:
    groups = [
        {
            "name": f"bulk-{i + 1}",
            "agents": 3,
            "held_now": held,
            "held_share": {"hour": 0.0, "day": 0.0},
            "wait_p95_s": {"hour": extra.get("wait"), "day": None},
        }
        for i, held in enumerate(held_now)
    ]
    return {
        "bulk_groups": groups,
        "agents": {"free_share": {"hour": free_hour, "day": 1.0}},
        "phones": {
            "total": 3,
            "ready": extra.get("ready", 3),
            "utilisation": {"hour": extra.get("phones_busy", 0.0), "day": 0.0},
            "spam_test_wait_p95_s": {"hour": None, "day": None},
        },
        "runs_waiting": extra.get("runs_waiting", 0),
    }


def test_an_idle_node_has_room_and_a_node_with_every_group_held_has_none() -> None:
    idle = capacity.verdict(_capacity([False, False, False]))
    assert idle["score"] == 1.0 and idle["verdict"] == "room"
    assert "3/3 bulk groups free now" in idle["reasons"]
    busy = capacity.verdict(_capacity([True, True, True]))
    assert busy["score"] == 0.0 and busy["verdict"] == "full"
    assert "0/3 bulk groups free now" in busy["reasons"]


def test_the_verdict_is_the_least_free_share_lowered_by_long_waits() -> None:
    assert capacity.verdict(_capacity([True, False, False]))["score"] == pytest.approx(0.6667)
    assert capacity.verdict(_capacity([False] * 3, free_hour=0.4))["score"] == 0.4
    assert capacity.verdict(_capacity([False] * 3, phones_busy=0.9))["score"] == 0.1
    waited = capacity.verdict(_capacity([False] * 3, wait=120.0))
    assert waited["score"] == 0.5 and any("120 s (p95)" in r for r in waited["reasons"])
    queued = capacity.verdict(_capacity([False] * 3, runs_waiting=2))
    assert queued["score"] == 0.5 and "2 run(s) waiting for a group now" in queued["reasons"]
    one_phone = capacity.verdict(_capacity([False] * 3, ready=1))
    assert one_phone["score"] == pytest.approx(0.3333)
    assert capacity.verdict(_capacity([]))["verdict"] == "full"


def _row(node_id: str, age: float, score: float | None, assigned: int = 0) -> registry.NodeRow:
    headroom = {} if score is None else {"headroom": {"score": score, "verdict": "x"}}
    return registry.NodeRow(
        id=node_id,
        name=f"name of {node_id}",
        base_url=f"https://{node_id}.example:8443",
        version="0.1.0",
        capacity={**headroom, "companies_30d": 4},
        heartbeat_interval_s=10.0,
        assigned_companies=assigned,
        registered_at=NOW,
        last_heartbeat_at=NOW,
        heartbeat_age_s=age,
    )


def test_a_row_is_stale_past_three_of_its_own_intervals() -> None:
    assert not _row("a", 30.0, 1.0).stale
    assert _row("a", 30.1, 1.0).stale
    assert "30.1 s ago" in _row("a", 30.1, 1.0).stale_reason()


def test_placement_ranks_fresh_nodes_by_headroom_and_never_proposes_a_stale_one() -> None:
    rows = [
        _row("busy", 1.0, 0.1),
        _row("stale", 99.0, 1.0),
        _row("roomy", 2.0, 0.9, assigned=5),
        _row("also-roomy", 2.0, 0.9, assigned=1),
        _row("silent", 1.0, None),
    ]
    candidates, excluded = registry.placement(rows)
    assert [c["id"] for c in candidates] == ["also-roomy", "roomy", "busy", "silent"]
    assert [e["id"] for e in excluded] == ["stale"]
    assert candidates[-1]["verdict"] == "unknown"
    assert candidates[0]["companies_30d"] == 4


def test_dsns_keep_their_password_out_of_messages_and_name_the_node_role() -> None:
    fleet_dsn = "postgresql://cp:secret@db.example:5433/registry"
    assert registry.safe_dsn(fleet_dsn) == "postgresql://cp@db.example:5433/registry"
    assert registry.safe_dsn("postgresql://cp@db/registry") == "postgresql://cp@db/registry"
    assert registry.safe_dsn("host=db password='a b' dbname=r") == "host=db password=*** dbname=r"
    assert registry.safe_dsn("host=db password=s3cret") == "host=db password=***"
    node = registry.node_dsn(fleet_dsn, "node-7", "p/w")
    assert node == "postgresql://hanjullo_node_node-7:p%2Fw@db.example:5433/registry"
    # The control plane's credentials in the query go to no node, and show in no message.
    in_query = "postgresql://db.example/registry?user=cp&sslmode=verify-full&password=s3cret"
    assert registry.safe_dsn(in_query) == (
        "postgresql://db.example/registry?user=cp&sslmode=verify-full&password=***"
    )
    node = registry.node_dsn(in_query + "&passfile=/root/.pgpass&sslpassword=k", "n", "pw")
    assert node == "postgresql://hanjullo_node_n:pw@db.example/registry?sslmode=verify-full"
    # Several hosts, a port that is no number: urllib cannot read them, safe_dsn still masks.
    multi = "postgresql://cp:secret@h1:5432,h2:5433/registry?target_session_attrs=read-write"
    assert registry.safe_dsn(multi) == (
        "postgresql://cp@h1:5432,h2:5433/registry?target_session_attrs=read-write"
    )
    assert registry.safe_dsn("postgresql://cp:s@cret@db:x/r") == "postgresql://cp@db:x/r"
    assert registry.node_dsn(multi, "n", "pw") == (
        "postgresql://hanjullo_node_n:pw@h1:5432,h2:5433/registry?target_session_attrs=read-write"
    )
    assert registry.node_dsn("postgresql://cp@[::1]:5432/r", "n", "pw") == (
        "postgresql://hanjullo_node_n:pw@[::1]:5432/r"
    )


STATUS = {
    "agents": [{"state": "ok"}, {"state": "ok"}, {"state": "unreachable"}],
    "line_groups": [
        {"type": "bulk", "holder": {"company": "c", "run_id": "r"}},
        {"type": "bulk", "holder": None},
        {"type": "test", "holder": {"company": "c", "run_id": "t"}},
    ],
    "runs": [{"status": "queued"}, {"status": "sending"}],
    "modems": [
        {"carrier": "SKT", "state": "ready"},
        {"carrier": "KT", "state": "hung"},
        {"carrier": "LGU", "state": "ready"},
    ],
    "spam_tests": {"queue": [{}, {}], "active": []},
}


def test_a_view_row_counts_agents_bulk_groups_waiting_runs_phones_and_tests() -> None:
    assert fleet.summary(STATUS) == {
        "agents_ok": 2,
        "agents_total": 3,
        "groups_held": 1,
        "groups_total": 2,
        "runs_waiting": 1,
        "phones_ready": {"KT": 0, "LGU": 1, "SKT": 1},
        "spam_tests_queued": 2,
    }
    assert fleet.summary(None) == {}


def test_totals_add_up_the_nodes_that_answered_and_count_every_state() -> None:
    nodes = [
        fleet.NodeView(_row("a", 1.0, 1.0), status=STATUS, summary=fleet.summary(STATUS)),
        fleet.NodeView(_row("b", 1.0, 1.0), status=STATUS, summary=fleet.summary(STATUS)),
        fleet.NodeView(_row("c", 99.0, 1.0), state="unreachable", reason="x"),
    ]
    totals = fleet.totals(nodes)
    assert totals["nodes"] == 3 and totals["ok"] == 2 and totals["unreachable"] == 1
    assert totals["agents_ok"] == 4 and totals["groups_held"] == 2
    assert totals["phones_ready"] == {"KT": 0, "LGU": 2, "SKT": 2}
    view = fleet.FleetView(nodes, 0.1, totals)
    shape = view.as_json()
    assert set(shape) == {"nodes", "totals"}
    assert set(shape["nodes"][0]) == {"id", "name", "state", "reason", "heartbeat_age_s", "status"}
    assert shape["nodes"][2]["status"] is None
    text = fleet.render(view)
    korean = fleet.render(
        fleet.FleetView(
            [fleet.NodeView(dataclasses.replace(_row("k", 1.0, 1.0), name="서울 1호"))], 0.1, totals
        )
    )
    header, row = korean.split("\n")[:2]
    # Columns line up by display width: the state column starts at the same column.
    assert cell_len(header[: header.index("state")]) == cell_len(row[: row.index("ok")])
    assert "c: unreachable: x" in text and "3 nodes (2 ok, 0 stale, 1 unreachable)" in text


def test_targets_are_each_nodes_metrics_through_its_proxy() -> None:
    row = _row("a", 1.0, 1.0)
    prefixed = dataclasses.replace(row, base_url="https://lb.example/node-a")
    assert fleet.targets([row, prefixed]) == [
        {
            "targets": ["a.example:8443"],
            "labels": {
                "__scheme__": "https",
                "__metrics_path__": "/metrics",
                "node_id": "a",
                "node_name": "name of a",
            },
        },
        {
            "targets": ["lb.example"],
            "labels": {
                "__scheme__": "https",
                "__metrics_path__": "/node-a/metrics",
                "node_id": "a",
                "node_name": "name of a",
            },
        },
    ]


def test_the_heartbeat_takes_the_present_from_the_status_view() -> None:
    named = [("bulk-1", [1, 2, 3]), ("bulk-2", [4]), ("test", [10])]
    groups = [
        {"name": name, "agents": agents, **group}
        for (name, agents), group in zip(named, STATUS["line_groups"], strict=True)
    ]
    snapshot = {**STATUS, "line_groups": groups}
    assert inputs_of(snapshot) == {
        "bulk_groups": {"bulk-1": 3, "bulk-2": 1},
        "held_now": {"bulk-1"},
        "phones_total": 3,
        "phones_ready": 2,
        "spam_tests_queued": 2,
        "runs_waiting": 1,
    }


def test_the_fleet_commands_read_only_the_control_plane_section(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text('[control_plane]\ndsn = "postgresql://cp@db/registry"\n')
    plane = load_control_plane(path)
    assert plane.dsn.get_secret_value() == "postgresql://cp@db/registry"
    assert plane.heartbeat_interval_s == 10.0
    path.write_text('[control_plane]\nadvertise_url = "http://node"\n')
    with pytest.raises(ConfigError) as caught:
        load_control_plane(path)
    assert caught.value.problems[0].field == "control_plane.advertise_url"
    path.write_text('[control_plane]\ndsn = "host=db password=s3cret dbname=r"\n')
    with pytest.raises(ConfigError) as caught:
        load_control_plane(path)
    assert caught.value.problems[0].field == "control_plane.dsn"
    assert "postgresql:// URL" in str(caught.value.problems[0])
    assert "s3cret" not in str(caught.value.problems[0])
    for interval in ("0.5", "301", "nan"):
        path.write_text(f"[control_plane]\nheartbeat_interval_s = {interval}\n")
        with pytest.raises(ConfigError) as caught:
            load_control_plane(path)
        assert caught.value.problems[0].field == "control_plane.heartbeat_interval_s"
    path.write_text("[control_plane]\nheartbeat_interval_s = 300\n")
    assert load_control_plane(path).heartbeat_interval_s == 300
    assert ControlPlaneSection(advertise_url="https://n.example:8443/").advertise_url == (
        "https://n.example:8443"
    )


def test_a_node_that_heartbeats_must_advertise_its_url(tmp_path: Path) -> None:
    raw = tomllib.loads(sim_example(tmp_path))
    raw["control_plane"] = {"dsn": "postgresql://hanjullo_node_x@db/registry"}
    problems = daemon_problems(validate(raw))
    assert [p.field for p in problems] == ["control_plane.advertise_url"]
    raw["control_plane"]["advertise_url"] = "https://127.0.0.1:8443"
    assert daemon_problems(validate(raw)) == []


def test_a_simulated_fleets_site_is_the_shipped_one_per_node(tmp_path: Path) -> None:
    shared, server = site_for(12, 40012, tmp_path / "node12", tmp_path / "tls", tmp_path)
    assert "map_hash_bucket_size" in shared and "log_format hanjullo_api" in shared
    assert "upstream hanjullo" not in shared and "server {" not in shared
    assert f"server unix:{tmp_path}/node12/read.sock;" in server
    assert "upstream hanjullo_read_12 {" in server and "upstream hanjullo_control_12 {" in server
    assert "proxy_pass http://${hanjullo_upstream}_12;" in server
    assert "listen 127.0.0.1:40012 ssl;" in server and "[::]" not in server
    assert "ssl_verify_depth 0;" in server


async def test_a_status_call_reads_json_and_refuses_anything_else() -> None:
    answers = {
        b"/ok": b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n" + b'{"up": true}',
        b"/refused": b"HTTP/1.1 403 Forbidden\r\ncontent-length: 16\r\n\r\n" + b'{"error": "no"}\n',
    }

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        writer.write(answers[line.split()[1]])
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        assert await fleet.get_json(f"http://127.0.0.1:{port}/ok", None, 10) == {"up": True}
        with pytest.raises(ValueError, match="answered 403: 'no'"):
            await fleet.get_json(f"http://127.0.0.1:{port}/refused", None, 10)
    finally:
        server.close()
        await server.wait_closed()


async def test_a_node_answering_json_of_another_shape_is_unreachable_and_the_view_goes_on() -> None:
    good = {**STATUS, "node": {"id": "good"}}
    bodies = {
        "good": good,
        "list": [],
        "string": "x",
        "agents": {**good, "node": {"id": "agents"}, "agents": [1]},
        "carrier": {**good, "node": {"id": "carrier"}, "modems": [{"state": "ready"}]},
        "copied": good,
        "nameless": {**STATUS},
    }
    raw = {name: json.dumps(body).encode() for name, body in bodies.items()}
    raw["deep"] = b"[" * 100_000

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        body = raw[line.split()[1].decode().split("/")[1]]
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    rows = [
        dataclasses.replace(_row(name, 1.0, 1.0), base_url=f"http://127.0.0.1:{port}/{name}")
        for name in raw
    ]
    try:
        view = await fleet.call_nodes(rows, None, 10)
    finally:
        server.close()
        await server.wait_closed()
    nodes = {n.row.id: n for n in view.nodes}
    assert nodes["good"].state == "ok" and nodes["good"].reason is None
    broken = set(raw) - {"good"}
    assert {n for n, node in nodes.items() if node.state == "unreachable"} == broken
    assert all(nodes[n].reason and nodes[n].status is None for n in broken)
    assert "answered for node 'good', not for 'copied'" in str(nodes["copied"].reason)
    assert "answered for node None" in str(nodes["nameless"].reason)
    assert "nested too deeply" in str(nodes["deep"].reason)
    assert "list, not an object" in str(nodes["list"].reason)
    # The others' rows and the totals are still drawn; only the good node's status counts.
    assert view.totals["ok"] == 1 and view.totals["unreachable"] == len(broken)
    assert view.totals["agents_ok"] == 2 and view.totals["phones_ready"]["SKT"] == 1
    text = fleet.render(view)
    assert "deep: unreachable: ValueError: answered JSON nested too deeply" in text
    json.dumps(view.as_json())


async def test_a_node_that_handshakes_and_never_answers_costs_its_timeout_and_no_tls_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    authority = pki.Authority(pki.name("test CA"))
    cert, key = authority.issue("127.0.0.1", server=True).write(tmp_path, "server")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    (tmp_path / "ca.crt").write_bytes(authority.cert_pem)
    client_context = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    connected = asyncio.Event()
    release = asyncio.Event()

    async def black_hole(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connected.set()  # the handshake is done; it never reads nor answers
        await release.wait()
        writer.close()

    waited: list[object] = []
    real_wait_closed = asyncio.StreamWriter.wait_closed

    async def wait_closed(self: asyncio.StreamWriter) -> None:
        waited.append(self)
        await real_wait_closed(self)

    monkeypatch.setattr(asyncio.StreamWriter, "wait_closed", wait_closed)
    server = await asyncio.start_server(black_hole, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(TimeoutError):
            await fleet.get_json(f"https://127.0.0.1:{port}/v1/status", client_context, 0.2)
    finally:
        release.set()
        server.close()
        await server.wait_closed()
    assert connected.is_set()
    # A TLS close would wait for the black hole's close_notify: the connection is aborted.
    assert waited == []


class _FakeConn:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.closed = False

    def is_closed(self) -> bool:
        return self.closed

    async def fetchval(self, sql: str, *args: Any, **options: Any) -> Any:
        self.calls.append((sql, *args))
        return NOW

    def terminate(self) -> None:
        self.closed = True


class _Stop(Exception):
    """Ends the component's loop at its first sleep."""


def _plane(tmp_path: Path) -> ControlPlane:
    raw = tomllib.loads(sim_example(tmp_path))
    raw["control_plane"] = {
        "dsn": "postgresql://hanjullo_node_x:secret@db.example/registry",
        "advertise_url": "https://node.example:8443",
        "heartbeat_interval_s": 7,
    }
    runtime = Runtime.create(validate(raw))
    snapshot = {**STATUS, "line_groups": [], "modems": [], "runs": []}
    return ControlPlane(runtime, PostgresKeeper(runtime), lambda: snapshot)


async def test_a_heartbeat_carries_the_row_and_says_when_capacity_was_not_measured(
    tmp_path: Path,
) -> None:
    plane = _plane(tmp_path)
    conns: list[_FakeConn] = []

    async def connect(dsn: str, **kwargs: Any) -> _FakeConn:
        conns.append(_FakeConn())
        return conns[-1]

    plane.connect = connect
    await plane.beat()
    await plane.beat()
    assert len(conns) == 1 and len(conns[0].calls) == 2
    sql, node_id, _name, url, _version, sent, interval = conns[0].calls[0]
    assert sql == registry.HEARTBEAT_SQL
    assert (node_id, url, interval) == (
        plane.runtime.config.node.id,
        "https://node.example:8443",
        7,
    )
    measured = json.loads(sent)
    # The node's own PostgreSQL is not up in this test: the heartbeat goes, unmeasured.
    assert measured["headroom"]["verdict"] == "unknown" and "unmeasured" in measured
    conns[0].closed = True
    await plane.beat()
    assert len(conns) == 2


async def test_the_component_is_degraded_while_the_registry_is_down_and_recovers(
    tmp_path: Path,
) -> None:
    plane = _plane(tmp_path)
    down = True

    async def connect(dsn: str, **kwargs: Any) -> _FakeConn:
        if down:
            raise ConnectionRefusedError("connection refused")
        return _FakeConn()

    async def sleep(seconds: float) -> None:
        raise _Stop

    plane.connect = connect
    plane.sleep = sleep
    health = Health("control-plane")
    with pytest.raises(_Stop):
        await plane.run(health)
    assert health.state == ComponentState.DEGRADED
    assert "secret" not in health.status.reason
    assert health.status.reason.startswith(
        "central registry postgresql://hanjullo_node_x@db.example/registry unreachable"
    )
    failures = plane.runtime.metrics.heartbeat_failures.labels("control-plane")
    assert failures._value.get() == 1
    down = False
    with pytest.raises(_Stop):
        await plane.run(health)
    assert health.state == ComponentState.RUNNING


def test_between_measurements_a_heartbeat_carries_what_is_true_now(tmp_path: Path) -> None:
    plane = _plane(tmp_path)
    measured = {**_capacity([False, False, False]), "companies_30d": 2}
    measured["phones"]["spam_tests_queued"] = 0
    measured["headroom"] = capacity.verdict(measured)
    now = {
        "bulk_groups": {"bulk-1": 3, "bulk-2": 3, "bulk-3": 3},
        "held_now": {"bulk-1", "bulk-2", "bulk-3"},
        "phones_total": 3,
        "phones_ready": 3,
        "spam_tests_queued": 4,
        "runs_waiting": 1,
    }
    present = plane._with_present(measured, now)
    assert all(g["held_now"] for g in present["bulk_groups"])
    assert present["phones"]["spam_tests_queued"] == 4 and present["runs_waiting"] == 1
    assert present["headroom"]["score"] == 0.0 and present["companies_30d"] == 2
    # The measurement itself is left as it was.
    assert measured["headroom"]["score"] == 1.0
    assert not any(g["held_now"] for g in measured["bulk_groups"])
