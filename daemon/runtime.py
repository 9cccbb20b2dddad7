"""What every component of a running daemon shares: the current configuration,
the node clock, the version, the start time and the node's counters (`metrics.py`).

SIGHUP swaps :attr:`Runtime.config`; components read timings from it each time
they use one, so a reload takes effect without a restart where that is safe.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from config.clock import NodeClock
from config.model import NodeConfig
from config.version import package_version
from daemon.metrics import NodeMetrics


@dataclass(slots=True)
class Runtime:
    config: NodeConfig
    config_path: Path | None = None
    clock: NodeClock = field(default_factory=NodeClock)
    version: str = field(default_factory=package_version)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    started_monotonic: float = field(default_factory=time.monotonic)
    metrics: NodeMetrics = field(default_factory=NodeMetrics)

    @classmethod
    def create(cls, config: NodeConfig, config_path: Path | None = None) -> Runtime:
        return cls(config=config, config_path=config_path, clock=NodeClock(config.clock.file))

    def uptime_s(self) -> float:
        return time.monotonic() - self.started_monotonic


# Sections whose change a running daemon can take on at once; everything else
# (databases, agents, groups, modems, socket, node id) needs a restart.
RELOADABLE_SECTIONS = ("dispatch", "supervision", "spam_tests", "phones", "logging", "simulator")


def diff_sections(old: NodeConfig, new: NodeConfig) -> tuple[list[str], list[str]]:
    """(changed sections applied live, changed sections that need a restart)."""
    live: list[str] = []
    restart: list[str] = []
    for name in type(old).model_fields:
        if getattr(old, name) != getattr(new, name):
            (live if name in RELOADABLE_SECTIONS else restart).append(name)
    return live, restart
