from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from config.example import instance_databases
from simulators.harness import SimulatedNode, current_instance
from tests import services
from tests.config_edits import settings
from tests.integration.modem_fixtures import kt_modem  # noqa: F401 - a shared fixture

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session", autouse=True)
def _services_up() -> None:
    for name, port in services.PORTS.items():
        if not services.port_open(port):
            services.start(name)
    services.fresh_databases(*instance_databases(current_instance()))


@pytest.fixture
def sim_node(node_dir: Path) -> Iterator[SimulatedNode]:
    """A simulated node's files and `db init`, nothing started yet."""
    node = SimulatedNode(node_dir)
    node.db_init()
    try:
        yield node
    finally:
        node.close()


# Simulator settings for tests: quick carriers, quick log moves, small storage.
FAST_NETWORK = {
    "simulator": {
        "agents": {"log_move_delay_s": 0.3},
        "modems": {"storage_capacity": 8},
        "network": {carrier: {"latency_s": [0.2, 0.5]} for carrier in ("SKT", "KT", "LGU")},
    }
}


def fast_network(text: str) -> str:
    return settings(text, FAST_NETWORK)


@pytest.fixture(scope="module")
def live_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatedNode]:
    """One running simulator (no daemon) shared by a test module."""
    node = SimulatedNode(tmp_path_factory.mktemp("sim"), overrides=fast_network)
    node.db_init()
    node.start_sim()
    try:
        yield node
    finally:
        node.close()
