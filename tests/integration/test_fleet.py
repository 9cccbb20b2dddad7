"""The fleet on one machine (issue 20): three simulated nodes (instances 11, 12, 13) behind
one real nginx with mutual TLS, heartbeating into a real central registry
(``hanjullo_central_11`` on the local PostgreSQL), viewed with `hanjulloctl fleet …` as the
control plane would — the automated acceptance 1–5 of docs/fleet.md.

One fleet for the module (`simulators/fleet.py`, the code behind `hanjullo-sim fleet`),
with a 1 s heartbeat so that "three intervals" is short; each test leaves every node `ok`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import threading
import time
import tomllib
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
import redis

from daemon import capacity
from simulators.fleet import SimulatedFleet, free_port
from simulators.harness import SimulatedNode, command, wait_for
from tests import services
from tests.integration.conftest import fast_network
from tests.integration.helpers import pg_fetch, start_send

INSTANCES = (11, 12, 13)
INTERVAL_S = 1.0
CALLBACK = "0212345678"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatedFleet]:
    if os.geteuid() != 0:
        pytest.skip("nginx's workers run as a user of their own: needs root")
    for n in INSTANCES:
        services.drop_databases(f"node{n}")
        redis.Redis(port=6379, db=n).flushdb()
    made = SimulatedFleet(
        tmp_path_factory.mktemp("fleet"),
        list(INSTANCES),
        heartbeat_interval_s=INTERVAL_S,
        overrides=fast_network,
    )
    try:
        made.start()
        made.wait_all_ok(timeout_s=60)
        yield made
    finally:
        made.close()


def _node(fleet: SimulatedFleet, n: int) -> SimulatedNode:
    return fleet.nodes[n]


def _rows(view: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in view["nodes"]}


def _phones(count: int, seed: int) -> list[str]:
    return [f"010{seed:02d}{i:06d}" for i in range(count)]


def _send(
    node: SimulatedNode, company: str, phones: list[str], wait: bool
) -> subprocess.Popen[str]:
    return start_send(node, company, CALLBACK, phones, f"{company} 안내 문자", wait)


def _sent(proc: subprocess.Popen[str], timeout_s: float = 90) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout_s)
    assert proc.returncode == 0, err
    result: dict[str, Any] = json.loads(out)
    return result


def _all_send_and_complete(fleet: SimulatedFleet, instances: tuple[int, ...], tag: str) -> None:
    procs = {n: _send(_node(fleet, n), f"{tag}-{n}", _phones(3, n), wait=True) for n in instances}
    for n, proc in procs.items():
        final = _sent(proc)
        # Every recipient has its outcome; the simulated network fails 2 % of messages
        # (`[simulator.network] failure_rate`), so a failure is one.
        assert final["status"] == "completed", (n, final)
        assert final["success"] + final["fail"] == 3 and final["success"] >= 1, (n, final)


def _fleet_ctl(fleet: SimulatedFleet, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command("hanjulloctl"), "--config", str(fleet.fleet_toml), "fleet", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _place(fleet: SimulatedFleet) -> dict[str, Any]:
    result = _fleet_ctl(fleet, "place", "--json")
    placed: dict[str, Any] = json.loads(result.stdout)
    return placed


# ---- acceptance 1 -----------------------------------------------------------------------------
def test_three_nodes_register_and_the_view_shows_each_with_its_own_run(
    fleet: SimulatedFleet,
) -> None:
    view = fleet.view()
    rows = _rows(view)
    assert set(rows) == set(fleet.node_ids.values())
    for node_id in fleet.node_ids.values():
        row = rows[node_id]
        assert row["state"] == "ok" and row["reason"] is None, row
        assert row["heartbeat_age_s"] < 3 * INTERVAL_S
        status = row["status"]
        assert status["node"]["id"] == node_id
        assert len(status["agents"]) == 11 and all(a["state"] == "ok" for a in status["agents"])
        assert {g["name"] for g in status["line_groups"]} >= {"bulk-1", "bulk-2", "bulk-3"}
        assert sorted(m["carrier"] for m in status["modems"] if m["state"] == "ready") == [
            "KT",
            "LGU",
            "SKT",
        ]
    totals = view["totals"]
    assert totals["nodes"] == totals["ok"] == 3
    assert totals["agents_ok"] == totals["agents_total"] == 33
    assert totals["groups_total"] == 9
    assert totals["phones_ready"] == {"KT": 3, "LGU": 3, "SKT": 3}

    # A run sent on node 2 is in node 2's row, and in no other.
    two = fleet.node_ids[INSTANCES[1]]
    run_id = _sent(_send(_node(fleet, INSTANCES[1]), "fleet-one", _phones(3, 21), wait=False))[
        "run_id"
    ]
    rows = _rows(fleet.view())
    holders = {
        node_id: {r["run_id"] for r in row["status"]["runs"]} for node_id, row in rows.items()
    }
    assert run_id in holders[two]
    assert all(run_id not in runs for node_id, runs in holders.items() if node_id != two)

    # The registry holds what the heartbeat carries; the node wrote its row with the central
    # server's time, and a node's role cannot write another's row or read the table.
    rows_db = pg_fetch(
        "SELECT id, base_url, capacity->'headroom'->>'verdict', assigned_companies FROM nodes",
        database=fleet.central_db,
    )
    assert {r[0] for r in rows_db} == set(fleet.node_ids.values())
    assert all(r[1].startswith("https://127.0.0.1:") and r[2] and r[3] == 0 for r in rows_db)
    one = _node(fleet, INSTANCES[0])
    dsn = one.status_config()["control_plane"]["dsn"]
    forged = subprocess.run(
        ["psql", dsn, "-Atc", f"SELECT node_heartbeat('{two}', 'x', 'x', 'x', '{{}}', 1)"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert forged.returncode != 0 and "heartbeats for node" in forged.stderr
    # Nor keep its own row fresh for days with an interval of its choosing (nor NaN, NULL).
    own = fleet.node_ids[INSTANCES[0]]

    async def bad_intervals() -> list[str | None]:
        conn = await asyncpg.connect(dsn)
        codes = []
        try:
            for interval in (None, float("nan"), 0.5, 0.0, -1.0, 301.0, float("inf")):
                try:
                    await conn.fetchval(
                        "SELECT node_heartbeat($1, 'x', 'x', 'x', '{}', $2)", own, interval
                    )
                except asyncpg.PostgresError as exc:
                    codes.append(exc.sqlstate)
                else:
                    codes.append(None)
        finally:
            await conn.close()
        return codes

    assert asyncio.run(bad_intervals()) == ["22023"] * 7
    read = subprocess.run(
        ["psql", dsn, "-Atc", "UPDATE nodes SET assigned_companies = 99"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert read.returncode != 0 and "permission denied" in read.stderr
    # The other commands: file_sd targets through each node's proxy.
    targets = json.loads(_fleet_ctl(fleet, "targets").stdout)
    assert {t["labels"]["node_id"] for t in targets} == set(fleet.node_ids.values())
    assert all(t["labels"]["__scheme__"] == "https" for t in targets)
    # The run finishes; nothing is left holding a group for the tests after this one.
    wait_for(
        lambda: (
            not _rows(fleet.view())[two]["status"]["runs"]
            or all(r["status"] == "completed" for r in _rows(fleet.view())[two]["status"]["runs"])
        ),
        60,
        "node 2's run to finish",
        interval_s=0.5,
    )


# ---- acceptance 5 -----------------------------------------------------------------------------
def test_place_proposes_the_node_with_most_headroom_after_node_1_is_made_busy(
    fleet: SimulatedFleet,
) -> None:
    first = _node(fleet, INSTANCES[0])
    one = fleet.node_ids[INSTANCES[0]]
    for agent in range(1, 10):
        first.sim_ctl("agent", str(agent), "slow")
    runs = [
        _sent(_send(first, f"busy-{i}", _phones(600, 30 + i), wait=False))["run_id"]
        for i in range(3)
    ]
    try:

        def held_bulk_groups() -> int:
            groups = _rows(fleet.view())[one]["status"]["line_groups"] or []
            return sum(1 for g in groups if g["type"] == "bulk" and g["holder"] is not None)

        wait_for(
            lambda: held_bulk_groups() == 3,
            60,
            "node 1's three bulk groups held",
            interval_s=0.5,
        )

        def proposed_elsewhere() -> dict[str, Any] | None:
            # The view reads node 1 itself; place reads its heartbeats, which may still carry
            # a beat from before the third group was leased: wait for one that has all three.
            placed = _place(fleet)
            scores = {c["id"]: c["score"] for c in placed["candidates"]}
            busy = next((c for c in placed["candidates"] if c["id"] == one), None)
            if busy is None or not any("0/3 bulk groups free now" in r for r in busy["reasons"]):
                return None
            if scores[one] < min(s for i, s in scores.items() if i != one):
                return placed
            return None

        placed = wait_for(proposed_elsewhere, 10 * INTERVAL_S, "node 1's headroom to drop")
        assert placed["proposal"] != one
        best = placed["candidates"][0]
        assert best["id"] == placed["proposal"] and best["reasons"]
        busy = next(c for c in placed["candidates"] if c["id"] == one)
        assert busy["score"] == 0 and any("0/3 bulk groups free now" in r for r in busy["reasons"])
    finally:
        for run_id in runs:
            first.ctl("run", "cancel", run_id, check=False)
        for agent in range(1, 10):
            first.sim_ctl("agent", str(agent), "ok")


# ---- acceptance 2 -----------------------------------------------------------------------------
def test_a_killed_daemon_goes_stale_while_the_others_stay_ok_and_comes_back(
    fleet: SimulatedFleet,
) -> None:
    third = _node(fleet, INSTANCES[2])
    three = fleet.node_ids[INSTANCES[2]]
    assert third.daemon is not None
    killed_at = time.monotonic()
    third.daemon.send_signal(signal.SIGKILL)
    third.daemon.wait(10)
    third.daemon = None

    def gone() -> dict[str, Any] | None:
        view = fleet.view(timeout_s=2)
        return view if _rows(view)[three]["state"] != "ok" else None

    view = wait_for(gone, 3 * INTERVAL_S + 5, "node 3 to leave ok")
    noticed_s = time.monotonic() - killed_at
    # Within three heartbeat intervals (the view's own call counted in).
    assert noticed_s <= 3 * INTERVAL_S + 2.0, noticed_s
    rows = _rows(view)
    assert rows[three]["state"] in ("stale", "unreachable") and rows[three]["reason"]
    assert all(rows[i]["state"] == "ok" for i in rows if i != three)
    # Once three intervals passed, the registry says so too, and place never proposes it.
    time.sleep(3 * INTERVAL_S)
    row = _rows(fleet.view(timeout_s=2))[three]
    assert row["state"] == "unreachable" and "last heartbeat" in row["reason"]
    placed = _place(fleet)
    assert three not in {c["id"] for c in placed["candidates"]}
    assert three in {e["id"] for e in placed["excluded"]}
    # Nodes 1 and 2 keep sending.
    _all_send_and_complete(fleet, INSTANCES[:2], "after-kill")
    # Restarted, it is ok again.
    third.start_daemon(wait_ready_s=30)
    wait_for(
        lambda: _rows(fleet.view())[three]["state"] == "ok",
        30,
        "node 3 ok again",
        interval_s=0.5,
    )


# ---- acceptance 4 -----------------------------------------------------------------------------
class BlackHole:
    """A TCP listener that accepts every connection and never answers."""

    def __init__(self) -> None:
        self.port = free_port()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(64)
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def test_a_black_holed_proxy_costs_the_view_its_timeout_and_no_more(
    fleet: SimulatedFleet,
) -> None:
    third = _node(fleet, INSTANCES[2])
    three = fleet.node_ids[INSTANCES[2]]
    hole = BlackHole()
    try:
        # Node 3 heartbeats as usual, but its advertised proxy accepts and never answers.
        third.stop_daemon()
        third.start_daemon(
            wait_ready_s=30,
            env={"HANJULLO_CONTROL_PLANE__ADVERTISE_URL": f"https://127.0.0.1:{hole.port}"},
        )
        wait_for(
            lambda: pg_fetch(
                "SELECT base_url FROM nodes WHERE id = $1", three, database=fleet.central_db
            )[0][0].endswith(f":{hole.port}"),
            10,
            "node 3's black-holed base_url in the registry",
        )
        # What the command costs before it asks anyone (interpreter, imports), measured in
        # the same moment: the view itself may take its 2 s timeout and about no more.
        started = time.monotonic()
        _fleet_ctl(fleet, "--help")
        startup = time.monotonic() - started
        started = time.monotonic()
        result = _fleet_ctl(fleet, "status", "--json", "--timeout", "2")
        elapsed = time.monotonic() - started
        assert result.returncode == 0, result.stderr
        assert elapsed <= 2.0 + startup + 1.0, (elapsed, startup)
        rows = _rows(json.loads(result.stdout))
        assert rows[three]["state"] == "unreachable"
        assert rows[three]["reason"] == "no answer within 2 s" and rows[three]["status"] is None
        assert all(rows[i]["state"] == "ok" for i in rows if i != three)
        assert hole.held, "the view never connected to the black hole"
    finally:
        hole.close()
        third.stop_daemon()
        third.start_daemon(wait_ready_s=30)
    wait_for(
        lambda: _rows(fleet.view())[three]["state"] == "ok", 30, "node 3 ok again", interval_s=0.5
    )


# ---- acceptance 3 -----------------------------------------------------------------------------
def _central(fleet: SimulatedFleet, allow: bool) -> None:
    pg_fetch(
        f'ALTER DATABASE "{fleet.central_db}" WITH ALLOW_CONNECTIONS {str(allow).lower()}',
        database="postgres",
    )
    if not allow:
        pg_fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            fleet.central_db,
            database="postgres",
        )


def _plane_states(fleet: SimulatedFleet) -> dict[int, tuple[str, str]]:
    out = {}
    for n, node in fleet.nodes.items():
        component = next(c for c in node.status()["components"] if c["name"] == "control-plane")
        out[n] = (component["state"], component["reason"])
    return out


def test_with_the_central_database_down_nodes_keep_sending_and_recover_by_themselves(
    fleet: SimulatedFleet,
) -> None:
    before = dict(pg_fetch("SELECT id, last_heartbeat_at FROM nodes", database=fleet.central_db))
    _central(fleet, allow=False)
    try:
        states = wait_for(
            lambda: (
                (s := _plane_states(fleet))
                and all(state == "degraded" for state, _ in s.values())
                and s
            ),
            10 * INTERVAL_S,
            "every control-plane component degraded",
            interval_s=0.25,
        )
        assert all(fleet.central_db in reason for _, reason in states.values()), states
        result = _fleet_ctl(fleet, "status")
        assert result.returncode == 1 and result.stdout == ""
        assert "registry" in result.stderr and fleet.central_db in result.stderr
        # Every node keeps sending, and testing.
        tester = subprocess.Popen(
            [
                *command("hanjulloctl"),
                "spam-test",
                "--callback",
                CALLBACK,
                "--message",
                "central down 안내",
                "--wait",
                "--timeout",
                "60",
                "--json",
                "--config",
                str(_node(fleet, INSTANCES[0]).config_path),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _all_send_and_complete(fleet, INSTANCES, "central-down")
        report = _sent(tester)
        assert report["status"] == "completed" and report["overall"] == "pass", report
        assert all(state == "degraded" for state, _ in _plane_states(fleet).values())
    finally:
        _central(fleet, allow=True)
    # Heartbeats resume by themselves.
    wait_for(
        lambda: all(state == "running" for state, _ in _plane_states(fleet).values()),
        10 * INTERVAL_S,
        "every control-plane component running again",
        interval_s=0.25,
    )
    after = dict(pg_fetch("SELECT id, last_heartbeat_at FROM nodes", database=fleet.central_db))
    assert all(after[i] > before[i] for i in before)
    view = fleet.wait_all_ok(timeout_s=20)
    assert view["totals"]["ok"] == 3


def test_the_fleet_files_are_where_the_docs_say(fleet: SimulatedFleet) -> None:
    for n in INSTANCES:
        assert (fleet.dir / f"node{n}" / "node.toml").exists()
    for name in ("server-ca.pem", "fleet.crt", "fleet.key", "operator.crt", "operator.key"):
        assert (fleet.dir / "pki" / name).exists()
    operator = subprocess.run(
        [*command("hanjulloctl"), "--config", str(fleet.operator_toml), "fleet", "status"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert operator.returncode == 0 and "3 ok" in operator.stdout, operator.stderr
    assert Path(fleet.fleet_toml).read_text().count("client_cert") == 1


def test_hanjullo_sim_fleet_prints_the_view_and_stops_everything_on_sigterm(
    tmp_path: Path,
) -> None:
    if os.geteuid() != 0:
        pytest.skip("nginx's workers run as a user of their own: needs root")
    directory = tmp_path / "demo"
    proc = subprocess.Popen(
        [
            *command("hanjullo-sim"),
            "fleet",
            "--nodes",
            "1",
            "--dir",
            str(directory),
            "--first-instance",
            "14",
            "--heartbeat-interval",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
    reader.start()
    try:
        wait_for(
            lambda: any("fleet: 1 nodes (1 ok" in line for line in lines) or proc.poll(),
            90,
            "the fleet view on stdout",
            interval_s=0.2,
        )
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        config = directory / "node14" / "node.toml"
        port = urlsplit(tomllib.loads(config.read_text())["control_plane"]["advertise_url"]).port
        assert (directory / "fleet.toml").exists() and (directory / "operator.toml").exists()
        node_socket = directory / "node14" / "node.sock"
        assert node_socket.exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    # Everything it started is gone: the daemon's socket, the simulator, nginx's port.
    assert not node_socket.exists()
    assert port is not None
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0


def test_capacity_is_measured_from_the_nodes_own_rows(fleet: SimulatedFleet) -> None:
    """`daemon/capacity.py` on a real node database, with runs and spam tests of a node id
    no daemon has, at times relative to one `now`."""
    database = f"node{INSTANCES[0]}"
    node_id = f"capacity-probe-{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)

    def ago(**delta: float) -> datetime:
        return now - timedelta(**delta)

    runs = [
        # bulk-1: held 30 min of the hour after a 10 min wait; earlier, an hour (no wait).
        ("a", "bulk-1", "completed", ago(minutes=50), ago(minutes=40), ago(minutes=10), None),
        ("c", "bulk-1", "completed", ago(hours=5), ago(hours=5), ago(hours=4), None),
        # bulk-2: held for 90 min and still sending, after a 30 min wait.
        ("b", "bulk-2", "sending", ago(hours=2), ago(minutes=90), None, None),
        # 40 days ago: outside every window.
        ("z", "bulk-3", "completed", ago(days=40), ago(days=40), ago(days=40), None),
        # bulk-3: held an hour, released an hour ago; the run waits for its results since
        # (not completed, its row updated by each result sync): free in the hour.
        ("a", "bulk-3", "results", ago(hours=2), ago(hours=2), None, ago(hours=1)),
    ]
    run_ids = [uuid.uuid4() for _ in runs]

    async def scenario() -> dict[str, Any]:
        conn = await asyncpg.connect(host="127.0.0.1", user="postgres", database=database)
        try:
            for run_id, (company, group, status, queued, since, done, released) in zip(
                run_ids, runs, strict=True
            ):
                await conn.execute(
                    "INSERT INTO hanjullo.runs (id, node_id, company_id, line_group, status,"
                    " queued_at, group_since, completed_at, updated_at, group_released_at)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8::timestamptz,"
                    " coalesce($8::timestamptz, $9), $10)",
                    run_id, node_id, company, group, status, queued, since, done, now, released,
                )  # fmt: skip
            # Results: 4 landed 20 min ago (run a), 2 three hours ago (run c).
            for seq, (run_id, at) in enumerate(
                [(run_ids[0], ago(minutes=20))] * 4 + [(run_ids[1], ago(hours=3))] * 2
            ):
                await conn.execute(
                    "INSERT INTO hanjullo.run_recipients (run_id, seq, phone, message_text,"
                    " state, delivered_at) VALUES ($1, $2, '01000000000', 'x', 'final', $3)",
                    run_id, seq, at,
                )  # fmt: skip
            # Two overlapping spam tests: the phones busy 29 to 15 min ago, each waited 60 s.
            for company, created, started, done in (
                ("c", ago(minutes=30), ago(minutes=29), ago(minutes=19)),
                ("d", ago(minutes=26), ago(minutes=25), ago(minutes=15)),
            ):
                await conn.execute(
                    "INSERT INTO hanjullo.spam_tests (node_id, company_id, callback_number,"
                    " message_content_sms, status, created_at, started_at, completed_at)"
                    " VALUES ($1, $2, '0212345678', 'x', 'completed', $3, $4, $5)",
                    node_id, company, created, started, done,
                )  # fmt: skip
            return await capacity.measure(
                conn,
                node_id,
                now,
                bulk_groups={"bulk-1": 3, "bulk-2": 3, "bulk-3": 3},
                held_now={"bulk-2"},
                phones_total=3,
                phones_ready=3,
                spam_tests_queued=0,
                runs_waiting=0,
            )
        finally:
            await conn.execute("DELETE FROM hanjullo.runs WHERE node_id = $1", node_id)
            await conn.execute("DELETE FROM hanjullo.spam_tests WHERE node_id = $1", node_id)
            await conn.close()

    measured = asyncio.run(scenario())
    groups = {g["name"]: g for g in measured["bulk_groups"]}
    assert groups["bulk-1"]["held_share"] == {"hour": 0.5, "day": 0.0625}
    assert groups["bulk-1"]["wait_p95_s"] == {"hour": 600.0, "day": 570.0}
    assert groups["bulk-2"]["held_share"] == {"hour": 1.0, "day": 0.0625}
    assert groups["bulk-2"]["wait_p95_s"] == {"hour": None, "day": 1800.0}
    assert groups["bulk-3"]["held_share"] == {"hour": 0.0, "day": round(1 / 24, 4)}
    assert measured["agents"]["free_share"]["hour"] == 0.5
    assert measured["agents"]["results_per_s"] == {"hour": round(4 / 3600, 4), "day": 0.0001}
    assert measured["phones"]["utilisation"]["hour"] == round(14 * 60 / 3600, 4)
    assert measured["phones"]["spam_test_wait_p95_s"] == {"hour": 60.0, "day": 60.0}
    assert measured["companies_30d"] == 4
    headroom = measured["headroom"]
    # The least free share (the agents' 50 % of the hour), halved for bulk-1's 600 s wait and
    # again for the spam tests' 60 s.
    assert headroom["score"] == 0.125, headroom
    assert headroom["verdict"] == "full"
    assert "runs waited up to 600 s (p95) for a group in the hour" in headroom["reasons"]
    assert "spam tests waited 60 s (p95) for the phones in the hour" in headroom["reasons"]
