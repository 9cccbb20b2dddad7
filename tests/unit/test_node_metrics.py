"""/metrics of a node that has not started anything: the snapshot's gauges and the
counters on one registry, every configured series there from the first scrape."""

from __future__ import annotations

import tomllib
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from config.clocksync import ClockSync
from config.example import sim_example
from config.loader import validate
from daemon.http import Request
from daemon.node import Node
from daemon.runtime import Runtime
from dispatch.agent_tables import Backlog
from tests.monitoring_refs import used_metrics


async def scrape(node: Node) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    response = await node.api.metrics(Request("GET", "/metrics", "", b""))
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(response.body.decode()):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


async def test_a_fresh_node_exposes_its_series_and_the_clock(tmp_path: Path) -> None:
    config = validate(tomllib.loads(sim_example(tmp_path)))
    node = Node(Runtime(config=config))
    node.clock_sync = lambda: ClockSync(False, 16.0, 0.0, "adjtimex")
    samples = await scrape(node)
    node_id = (("node", config.node.id),)
    assert samples["hanjullo_clock_synchronised"] == {node_id: 0.0}
    assert samples["hanjullo_clock_max_error_seconds"] == {node_id: 16.0}
    assert samples["hanjullo_runs_paused_by_breaker"] == {node_id: 0.0}
    assert (
        samples["hanjullo_agent_state"][(("agent", "4"), ("group", "bulk-2"), ("state", "unknown"))]
        == 1.0
    )
    assert samples["hanjullo_rows_handed_total"][(("agent", "9"), ("group", "bulk-3"))] == 0.0
    assert samples["hanjullo_receipts_total"][(("carrier", "KT"), ("modem", "KT"))] == 0.0
    # What a fresh node cannot show yet: an event's first code or verdict, a heartbeat's
    # time, an agent's backlog before it was read.
    later = {
        "hanjullo_result_codes_total",
        "hanjullo_spam_verdicts_total",
        "hanjullo_heartbeat_last_success_timestamp_seconds",
        "hanjullo_agent_reachable",
        "hanjullo_agent_waiting_rows",
        "hanjullo_agent_oldest_waiting_seconds",
    }
    assert sorted(used_metrics() - set(samples)) == sorted(later)

    # Agent 1's queue read empty (no due row: 0 s old), agent 2's holds a due row 7 s old,
    # agent 3's was not read (no series).
    now = datetime.now(UTC)
    node.agents.statuses[1] = replace(
        node.agents.statuses[1], backlog=Backlog(3, 0, None, 2), checked_at=now
    )
    node.agents.statuses[2] = replace(
        node.agents.statuses[2], backlog=Backlog(5, 5, 7, 0), checked_at=now
    )
    oldest = (await scrape(node))["hanjullo_agent_oldest_waiting_seconds"]
    assert oldest == {
        (("agent", "1"), ("group", "bulk-1")): 0.0,
        (("agent", "2"), ("group", "bulk-1")): 7.0,
    }

    node.clock_sync = lambda: ClockSync(None, detail="adjtimex unavailable")
    samples = await scrape(node)
    assert "hanjullo_clock_synchronised" not in samples  # unknown is not a 0
