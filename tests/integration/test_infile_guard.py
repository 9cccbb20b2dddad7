"""A rogue MySQL server as the node's MySQL while a run is sent (issue 14, acceptance 1).

The rogue (`simulators/rogue_mysql.py`) relays to the real MariaDB and answers the
statements it selects with a LOCAL INFILE request for a canary file: nothing of the
canary may reach it. The simulated agents keep talking to MariaDB directly (the
simulator starts before the daemon's configuration points at the rogue), so only the
daemon's connections (dispatcher, agent monitor, spam tests, housekeeping) pass it.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulators.harness import SimulatedNode, wait_for
from simulators.rogue_mysql import Ask, Reply, RogueMySQLThread
from tests.integration.test_dispatch import (
    agent_rows,
    fast_dispatch,
    finished,
    numbers,
    reconfigure,
    send,
)

MYSQL = ("127.0.0.1", 3306)
RECIPIENTS = 5000  # three batches of 2000 at most: several LOAD DATA statements


@pytest.fixture
def canary(tmp_path: Path) -> tuple[Path, bytes]:
    path = tmp_path / "canary-environ"
    content = f"HANJULLO_TRAINING_SECRET=canary-{os.getpid()}-{time.time_ns()}\n".encode()
    path.write_bytes(content)
    return path, content


@pytest.fixture
def rogue_node(
    node_dir: Path, canary: tuple[Path, bytes]
) -> Iterator[tuple[SimulatedNode, RogueMySQLThread]]:
    with RogueMySQLThread(0, MYSQL, file_name=str(canary[0]), ask=Ask.NEVER) as rogue:
        node = SimulatedNode(node_dir, overrides=fast_dispatch)
        try:
            node.db_init()
            node.start_sim()  # the agents: MariaDB itself
            reconfigure(node, {"mysql": {"port": rogue.port}})
            node.start_daemon()
            yield node, rogue
        finally:
            node.close()


def test_a_rogue_mysql_gets_nothing_of_the_file_it_asks_for_while_a_run_is_sent(
    rogue_node: tuple[SimulatedNode, RogueMySQLThread], canary: tuple[Path, bytes]
) -> None:
    node, rogue = rogue_node
    # Every LOAD DATA statement, on every connection, is answered with a request for
    # the canary instead of the name the statement used.
    rogue.rogue.match = re.compile(r"^LOAD DATA")
    rogue.rogue.ask = Ask.EVERY_QUERY
    run_id = send(node, "acme", numbers("71", RECIPIENTS))
    log = node.dir / "logs" / "noded.log"
    wait_for(lambda: len(rogue.leaks) >= 3, 60, "three file requests (a handoff retried twice)")
    assert b"".join(leak.content for leak in rogue.leaks) == b""
    wait_for(lambda: log.read_text().count("did not offer") >= 3, 10, "the refusals logged")
    # The rogue becomes a faithful relay: the run goes on from where it stood.
    rogue.rogue.ask = Ask.NEVER
    info = finished(node, run_id)
    leaks = rogue.leaks
    assert leaks and all(
        leak.query.startswith("LOAD DATA LOCAL INFILE 'hanjullo-") for leak in leaks
    )
    assert {leak.reply for leak in leaks} == {Reply.CLOSED}  # refused, connection dropped
    assert b"".join(leak.content for leak in leaks) == b""
    assert canary[1] not in log.read_bytes()
    assert str(canary[0]) in log.read_text()  # the refusal names what was asked for
    rows = agent_rows(run_id)
    assert rows["total"] == rows["distinct"] == RECIPIENTS  # every refused batch later, once
    assert info["inserted"] == RECIPIENTS
