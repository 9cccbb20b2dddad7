"""Two agent processes on one table never send a row twice; MySQL outages are survived."""

from __future__ import annotations

import asyncio
import tomllib
import uuid
from pathlib import Path

import pytest

from config.clock import NodeClock
from config.example import sim_example
from config.loader import validate
from simulators.agent import SimAgent
from simulators.harness import current_instance
from simulators.network import CarrierNetwork
from tests import services
from tests.integration.helpers import insert_rows, mysql, rows_by_tag

TABLE = "SMSQ_SEND_99"


def _config(tmp_path: Path) -> object:
    raw = tomllib.loads(sim_example(tmp_path, instance=current_instance()))
    raw["agents"][0]["table"] = TABLE
    raw["simulator"]["agents"]["rate_per_s"] = 2000
    raw["simulator"]["agents"]["log_move_delay_s"] = 0.0
    raw["simulator"]["agents"]["result_delay_s"] = [0.0, 0.01]
    return validate(raw)


def _reset() -> None:
    conn = mysql()
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW TABLES LIKE 'SMSQ\\_SEND\\_99%%'")
            for (name,) in cur.fetchall():
                cur.execute(f"DROP TABLE `{name}`")
    finally:
        conn.close()


async def test_two_agents_on_one_table_never_take_the_same_row(tmp_path: Path) -> None:
    _reset()
    config = _config(tmp_path)
    clock = NodeClock(None)
    network = CarrierNetwork(config, [], clock)  # type: ignore[arg-type]
    agent_config = config.agents[0]  # type: ignore[attr-defined]
    first = SimAgent(agent_config, config, network, clock)  # type: ignore[arg-type]
    second = SimAgent(
        agent_config.model_copy(update={"admin": "127.0.0.1:0"}),
        config,  # type: ignore[arg-type]
        network,
        clock,
    )
    assert await first.step()  # creates the tables
    tag = "claims-test"
    insert_rows(
        TABLE,
        [
            {
                "dest_no": f"0105557{i:04d}",
                "call_back": "15886000",
                "msg_contents": f"row {i}",
                "app_etc1": tag,
            }
            for i in range(3000)
        ],
    )
    try:
        for _ in range(2000):
            await asyncio.gather(first.step(), second.step())
            if first.counters.moved + second.counters.moved >= 3000:
                break
            await asyncio.sleep(0.01)
    finally:
        first._drop_conn()
        second._drop_conn()
        await network.close()
    assert first.counters.picked > 0 and second.counters.picked > 0
    assert first.counters.picked + second.counters.picked == 3000
    conn = mysql()
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW TABLES LIKE 'SMSQ\\_SEND\\_99\\_%%'")
            logs = [r[0] for r in cur.fetchall()]
    finally:
        conn.close()
    rows = rows_by_tag(tag, [TABLE, *logs])
    assert len(rows) == 3000
    assert len({r["seqno"] for r in rows}) == 3000
    assert all(r["rsv1"] == "5" for r in rows)
    _reset()


@pytest.mark.outage
def test_simulator_survives_a_mysql_outage(live_sim: object) -> None:
    from simulators.harness import SimulatedNode, wait_for
    from tests.integration.helpers import existing_tables

    assert isinstance(live_sim, SimulatedNode)
    services.stop("mariadb")
    try:
        wait_for(lambda: "down" in live_sim.sim_ctl("status").stdout, 15, "agents to see it")
    finally:
        services.start("mariadb")
    tag = "after-outage-" + uuid.uuid4().hex[:8]
    insert_rows(
        "SMSQ_SEND_7",
        [
            {
                "dest_no": "01055558888",
                "call_back": "15886000",
                "msg_contents": "after the outage",
                "app_etc1": tag,
            }
        ],
    )
    rows = wait_for(
        lambda: [r for r in rows_by_tag(tag, existing_tables("SMSQ_SEND_7")) if r["rsv1"] == "5"],
        30,
        "the row to be sent after MySQL returned",
    )
    assert len(rows) == 1
