from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from simulators.harness import SimulatedNode
from tests import services

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session", autouse=True)
def _services_up() -> None:
    for name, port in services.PORTS.items():
        if not services.port_open(port):
            services.start(name)


@pytest.fixture
def sim_node(node_dir: Path) -> Iterator[SimulatedNode]:
    """A simulated node's files and `db init`, nothing started yet."""
    node = SimulatedNode(node_dir)
    node.db_init()
    try:
        yield node
    finally:
        node.close()
