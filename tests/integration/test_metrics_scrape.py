"""/metrics of a running simulated node after a campaign and a spam test: the counters
and histograms hold the right values, and every metric the shipped dashboard and alert
rules use is there."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from simulators.harness import SimulatedNode
from tests.config_edits import overrides
from tests.integration.conftest import FAST_NETWORK
from tests.integration.test_dispatch import FAST_DISPATCH, finished, numbers, send
from tests.integration.test_spam_tests import FAST_SPAM, spam_test, start, verdicts
from tests.monitoring_refs import used_metrics

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def node(node_dir: Path) -> Iterator[SimulatedNode]:
    sim = start(node_dir, overrides(FAST_NETWORK, FAST_SPAM, FAST_DISPATCH))
    try:
        yield sim
    finally:
        sim.close()


def scrape(node: SimulatedNode) -> Samples:
    text = subprocess.run(
        ["curl", "-sS", "--unix-socket", str(node.dir / "node.sock"), "http://localhost/metrics"],
        check=True,
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(
        value
        for (n, have), value in samples.items()
        if n == name and all((k, v) in have for k, v in labels.items())
    )


def test_a_campaign_and_a_spam_test_are_counted_and_every_used_metric_exists(
    node: SimulatedNode,
) -> None:
    before = scrape(node)
    assert total(before, "hanjullo_rows_handed_total") == 0
    assert total(before, "hanjullo_results_total", outcome="success") == 0

    run_id = send(node, "acme", numbers("55", 120))
    run = finished(node, run_id)
    node.sim_ctl("rules", "KT", "--block-keyword", "무료")
    report = spam_test(node, "--message", "한줄로 무료 체험 안내", "--company", "acme")
    assert verdicts(report) == {"SKT": "pass", "KT": "blocked", "LGU": "pass"}

    after = scrape(node)
    # Rows handed = rows inserted; the results as the run counted them.
    assert total(after, "hanjullo_rows_handed_total") == run["inserted"] == 120
    assert total(after, "hanjullo_results_total", outcome="success") == run["success"]
    assert total(after, "hanjullo_results_total", outcome="fail") == run["fail"]
    assert total(after, "hanjullo_result_codes_total") == run["success"] + run["fail"]
    assert total(after, "hanjullo_run_status_changes_total", status="sending") == 1
    assert total(after, "hanjullo_run_status_changes_total", status="completed") == 1
    assert total(after, "hanjullo_handoff_batch_seconds_count") >= 1
    # Verdicts by carrier, the receipts that passed them, and their delays.
    for carrier, verdict in verdicts(report).items():
        counted = total(after, "hanjullo_spam_verdicts_total", carrier=carrier, source="manual")
        assert counted == 1, carrier
        assert (
            total(
                after,
                "hanjullo_spam_verdicts_total",
                carrier=carrier,
                verdict=verdict,
                source="manual",
            )
            == 1
        )
    assert total(after, "hanjullo_spam_receipt_delay_seconds_count", carrier="SKT") == 1
    assert total(after, "hanjullo_spam_receipt_delay_seconds_count", carrier="KT") == 0
    assert total(after, "hanjullo_receipts_total", carrier="SKT") >= 1
    assert total(after, "hanjullo_receipts_total", carrier="KT") == 0
    assert total(after, "hanjullo_heartbeat_last_success_timestamp_seconds", store="postgres") > 0
    assert total(after, "hanjullo_clock_synchronised") in (0.0, 1.0)

    # Every metric of the dashboard and the alert rules is exposed by the node.
    exposed = {name for name, _ in after}
    missing = sorted(used_metrics() - exposed)
    assert not missing, f"used by the dashboard or the rules, not on /metrics: {missing}"
