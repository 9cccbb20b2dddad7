"""Two simulated nodes on one machine, made with `config example --instance N`, side by side
(issue 19): each sends its own run, and neither sees the other's rows, agents or phones.

Instances 6 and 7 (not this session's HANJULLO_TEST_INSTANCE, nor another session's): their
databases are dropped first, so `db init` has to create them.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pymysql
import pytest
import redis

from simulators.harness import (
    MYSQL_CONNECTIONS_DAEMON,
    MYSQL_CONNECTIONS_SIMULATOR,
    SimulatedNode,
    mysql,
    mysql_headroom,
)
from tests import services
from tests.integration.conftest import fast_network
from tests.integration.helpers import pg_fetch, start_send

INSTANCES = (6, 7)
CALLBACK = "0212345678"
PHONES = {6: ["01055550601", "01055550602"], 7: ["01055550701", "01055550702", "01055550703"]}


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[int, SimulatedNode]]:
    made: dict[int, SimulatedNode] = {}
    try:
        for n in INSTANCES:
            services.drop_databases(f"node{n}")
            redis.Redis(port=6379, db=n).flushdb()
            made[n] = SimulatedNode(
                tmp_path_factory.mktemp(f"node{n}"), overrides=fast_network, instance=n
            )
        for n, node in made.items():
            report = json.loads(node.ctl("db", "init", "--json").stdout)
            # The fixture dropped both: db init creates each instance's own.
            assert report["databases_created"] == [f"postgres:node{n}", f"mysql:node{n}"]
        for node in made.values():
            node.start_sim()
            node.start_daemon()
        yield made
    finally:
        for node in made.values():
            node.close()


def test_each_numbered_node_has_its_own_databases_ports_sockets_and_phones(
    nodes: dict[int, SimulatedNode],
) -> None:
    configs = {n: node.status_config() for n, node in nodes.items()}
    for n, config in configs.items():
        assert config["postgres"]["database"] == config["mysql"]["database"] == f"node{n}"
        assert config["redis"]["db"] == n
    six, seven = configs[6], configs[7]

    def own(config: dict[str, Any]) -> set[str]:
        return {
            *(a["admin"] for a in config["agents"]),
            *(m["device"] for m in config["modems"]),
            config["socket"]["path"],
            config["simulator"]["control_socket"],
            config["clock"]["file"],
            config["node"]["id"],
        }

    assert not own(six) & own(seven)
    # db init made both databases of each instance (the fixture dropped them first).
    for n in INSTANCES:
        (exists,) = pg_fetch(
            "SELECT count(*) FROM pg_database WHERE datname = $1", f"node{n}", database="postgres"
        )[0]
        assert exists == 1
        conn = mysql(f"node{n}")
        conn.close()


def _send(node: SimulatedNode, n: int) -> subprocess.Popen[str]:
    return start_send(node, f"multi-{n}", CALLBACK, PHONES[n], f"node {n} 안내 문자")


def _agent_rows(database: str) -> list[tuple[str, str]]:
    """(dest_no, msg_contents) of every row in a node's agent tables, live and log."""
    conn = mysql(database)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW TABLES LIKE 'SMSQ\\_SEND\\_%'")
            tables = [r[0] for r in cur.fetchall()]
            rows: list[tuple[str, str]] = []
            for table in tables:
                cur.execute(f"SELECT dest_no, msg_contents FROM `{table}`")
                rows += [(r[0], r[1]) for r in cur.fetchall()]
            return rows
    finally:
        conn.close()


def _mysql_connections(database: str) -> int:
    """Connections open now on one node's MySQL database."""
    conn = pymysql.connect(host="127.0.0.1", user="root", password="")
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM information_schema.PROCESSLIST WHERE db = %s", (database,)
            )
            row = cur.fetchone()
            assert row is not None
            return int(row[0])
    finally:
        conn.close()


def test_two_nodes_send_their_own_runs_and_see_only_their_own(
    nodes: dict[int, SimulatedNode],
) -> None:
    senders = {n: _send(node, n) for n, node in nodes.items()}
    finals: dict[int, Any] = {}
    for n, proc in senders.items():
        out, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, err
        finals[n] = json.loads(out)
    # What each node holds stays within what the harness makes room for.
    for n in INSTANCES:
        held = _mysql_connections(f"node{n}")
        assert 0 < held <= MYSQL_CONNECTIONS_DAEMON + MYSQL_CONNECTIONS_SIMULATOR, held
    for n, final in finals.items():
        assert final["status"] == "completed"
        # The company `send --company multi-N` made on this simulated node, by its code.
        assert pg_fetch(
            "SELECT company_code FROM companies WHERE id = $1::uuid",
            final["company"],
            database=f"node{n}",
        ) == [(f"multi-{n}",)]
        assert final["success"] == len(PHONES[n]) and final["fail"] == 0

    for n in INSTANCES:
        other = 13 - n
        rows = _agent_rows(f"node{n}")
        assert sorted(dest for dest, _ in rows) == sorted(PHONES[n])
        assert {text for _, text in rows} == {f"node {n} 안내 문자"}
        # PostgreSQL: this node's run only.
        runs = pg_fetch("SELECT company_id, node_id FROM hanjullo.runs", database=f"node{n}")
        node_id = nodes[n].status_config()["node"]["id"]
        assert runs == [(finals[n]["company"], node_id)]
        # The daemon's view: its own agents (ports) and phones (ptys), none of the other's.
        status = nodes[n].status()
        mine, theirs = nodes[n].status_config(), nodes[other].status_config()
        assert {a["admin"] for a in status["agents"]} == {a["admin"] for a in mine["agents"]}
        assert {m["device"] for m in status["modems"]} == {m["device"] for m in mine["modems"]}
        assert not {m["device"] for m in status["modems"]} & {m["device"] for m in theirs["modems"]}
        assert all(m["state"] == "ready" for m in status["modems"])
        # Redis: this node's keys are in its own database, and only its own.
        keys = [k.decode() for k in redis.Redis(port=6379, db=n).keys("*")]
        assert keys and all(theirs["node"]["id"] not in k for k in keys)
        assert any(node_id in k for k in keys)


def _max_connections() -> int:
    conn = pymysql.connect(host="127.0.0.1", user="root", password="", autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT @@GLOBAL.max_connections")
            row = cur.fetchone()
            assert row is not None
            return int(row[0])
    finally:
        conn.close()


def test_the_harness_raises_max_connections_only_when_a_node_would_not_fit() -> None:
    before = _max_connections()
    assert mysql_headroom(1) is None and _max_connections() == before
    try:
        raised = mysql_headroom(before + 1)
        assert raised is not None and raised > before + 1 and _max_connections() == raised
    finally:
        conn = pymysql.connect(host="127.0.0.1", user="root", password="", autocommit=True)
        try:
            with conn.cursor() as cur:
                cur.execute(f"SET GLOBAL max_connections = {before}")
        finally:
            conn.close()
