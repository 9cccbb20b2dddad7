"""The dispatcher's part of ``/v1/status``: who holds which line group, and every run that
is active or waiting with its progress (docs/status-api.md).

Built from the runs the main loop (or a status request) has just read and the in-memory
registry; reads no database itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from daemon.dispatcher.state import RunRegistry
from dispatch.store.runs import HOLDS_GROUP, Run, RunStatus


def holding(runs: Iterable[Run]) -> dict[str, Run]:
    """Group → the run that holds it."""
    return {r.line_group: r for r in runs if r.status in HOLDS_GROUP and r.line_group}


@dataclass(slots=True)
class StatusView:
    holders: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)

    def update(self, runs: list[Run], held: dict[str, Run], registry: RunRegistry) -> None:
        self.holders = {
            group: {
                "company": run.company_id,
                "run_id": str(run.id),
                "since": run.group_since.isoformat() if run.group_since else None,
            }
            for group, run in held.items()
        }
        self.runs = [
            _run_entry(r, registry)
            for r in sorted(runs, key=lambda r: r.queued_at)
            if r.status != RunStatus.CANCELLED
        ]


def _run_entry(run: Run, registry: RunRegistry) -> dict[str, Any]:
    state = registry.runs.get(run.id)
    return {
        "run_id": str(run.id),
        "company": run.company_id,
        "status": run.status.value,
        "reason": run.status_reason,
        "line_group": run.line_group,
        "target": run.target_count,
        "inserted": run.inserted_count,
        "success": run.success_count,
        "fail": run.fail_count,
        "pending": max(0, run.inserted_count - run.results),
        "queued_at": run.queued_at.isoformat() if run.queued_at else None,
        "handoff_failures": state.handoff_failures if state else 0,
        "handoff_error": state.handoff_error if state else None,
    }
