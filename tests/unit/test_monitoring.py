"""The shipped alert rules and Grafana dashboard (systemd/monitoring/): promtool accepts
the rules and their unit tests pass, the dashboard is well formed, and every metric they
use is documented. (tests/integration/test_metrics_scrape.py checks that a running node
exposes each of them.)"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from tests.monitoring_refs import (
    RULE_TESTS,
    RULES,
    dashboard,
    family,
    rule_exprs,
    used_metrics,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "status-api.md"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    assert tool, "promtool is missing: make setup installs Debian's prometheus package"
    return subprocess.run(
        [tool, *args], capture_output=True, text=True, check=False, cwd=RULES.parent, timeout=60
    )


def test_promtool_accepts_the_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 8 rules found" in result.stdout


def test_each_alert_fires_when_it_should_and_not_before() -> None:
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_the_issue_names_is_there() -> None:
    text = RULES.read_text(encoding="utf-8")
    alerts = set(re.findall(r"- alert: (\w+)", text))
    assert {
        "HanjulloAgentUnreachable",
        "HanjulloAgentStalled",
        "HanjulloModemNotReady",
        "HanjulloCanaryMissed",
        "HanjulloRunPausedByBreaker",
        "HanjulloClockNotSynchronised",
        "HanjulloHeartbeatStale",
    } <= alerts
    assert len(rule_exprs()) == len(alerts) == 8


def test_the_dashboard_is_one_nodes_and_well_formed() -> None:
    board = dashboard()
    assert board["uid"] == "hanjullo-node" and board["schemaVersion"] >= 36
    assert [v["name"] for v in board["templating"]["list"]] == ["datasource"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target["refId"], panel["title"]


def test_every_metric_used_is_documented() -> None:
    documented = set(re.findall(r"`(hanjullo_[a-z0-9_]+)`", DOCS.read_text(encoding="utf-8")))
    used = used_metrics()
    assert len(used) > 25
    missing = sorted(m for m in used if family(m) not in documented)
    assert not missing, f"used by the dashboard or the rules, not in docs/status-api.md: {missing}"
