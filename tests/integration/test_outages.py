"""A database or Redis outage degrades the dependent components; they recover alone."""

from __future__ import annotations

import time

import pytest

from simulators.harness import SimulatedNode
from tests import services

pytestmark = pytest.mark.outage

DEPENDENT = {"mariadb": "agent-monitor", "redis": "redis", "postgres": "postgres"}
REASON = {
    "mariadb": "mysql unreachable",
    "redis": "redis unreachable",
    "postgres": "postgres unreachable",
}


@pytest.mark.parametrize("service", ["mariadb", "redis", "postgres"])
def test_outage_degrades_and_recovers(sim_node: SimulatedNode, service: str) -> None:
    component = DEPENDENT[service]
    sim_node.start_sim()
    sim_node.start_daemon()
    sim_node.wait_components(lambda s: s[component] == "running", 15, f"{component} running")
    stopped_at = time.monotonic()
    services.stop(service)
    try:
        sim_node.wait_components(
            lambda s: s[component] == "degraded",
            10,
            f"{component} degraded after stopping {service}",
        )
        assert time.monotonic() - stopped_at < 10
        entry = next(c for c in sim_node.status()["components"] if c["name"] == component)
        assert REASON[service] in entry["reason"]
        assert sim_node.daemon is not None and sim_node.daemon.poll() is None
    finally:
        services.start(service)
    sim_node.wait_components(
        lambda s: s[component] == "running",
        30,
        f"{component} running again after {service} returned",
    )
    assert sim_node.daemon is not None and sim_node.daemon.poll() is None
