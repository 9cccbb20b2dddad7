"""The metrics the shipped dashboard and alert rules use (systemd/monitoring/), for the
tests that check them against the docs and against a running node."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

MONITORING = Path(__file__).resolve().parents[1] / "systemd" / "monitoring"
RULES = MONITORING / "hanjullo-node.rules.yml"
RULE_TESTS = MONITORING / "hanjullo-node.rules.test.yml"
DASHBOARD = MONITORING / "hanjullo-node.dashboard.json"

METRIC = re.compile(r"\bhanjullo_[a-z0-9_]+")
HISTOGRAM_PARTS = ("_bucket", "_sum", "_count")


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]


def rule_exprs() -> list[str]:
    """Every `expr:` of the rules file (plain or folded over the lines that follow)."""
    exprs: list[str] = []
    lines = RULES.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped.startswith("expr:"):
            continue
        value = stripped[len("expr:") :].strip()
        if value in (">-", ">", "|"):
            indent = len(line) - len(line.lstrip())
            body = []
            for follow in lines[i + 1 :]:
                if follow.strip() and len(follow) - len(follow.lstrip()) <= indent:
                    break
                body.append(follow.strip())
            value = " ".join(body)
        exprs.append(value)
    return exprs


def used_metrics() -> set[str]:
    """Metric names (as exposed: `_total`, `_bucket` included) in the dashboard and rules."""
    return {m for expr in [*dashboard_exprs(), *rule_exprs()] for m in METRIC.findall(expr)}


def family(name: str) -> str:
    """A histogram's family name for one of its series' names; other names unchanged."""
    for part in HISTOGRAM_PARTS:
        if name.endswith(part):
            return name[: -len(part)]
    return name
