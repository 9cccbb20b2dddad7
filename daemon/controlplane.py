"""The `control-plane` component: the node's heartbeat into the central registry
(`daemon.registry`, docs/fleet.md).

Every `[control_plane] heartbeat_interval_s` it measures its capacity
(`daemon.capacity`) and upserts its own row through ``node_heartbeat(…)``, on a
connection of its own with `[control_plane] timeout_s` on every step. It never says the
node is "up": a reader judges freshness by the central server's clock. While the central
database cannot be reached it is ``degraded`` with the reason and tries again at the next
interval, by itself; nothing else in the node waits for it, so sending and testing go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import structlog

from daemon import capacity, registry
from daemon.metrics import CONTROL_PLANE_STORE
from daemon.runtime import Runtime
from daemon.stores import PG_ERRORS, PostgresKeeper
from daemon.supervisor import DependencyDown, Health

log = structlog.get_logger("control-plane")

# Capacity is measured at most this often (its queries read the day's recipients); the
# heartbeats between carry the last measurement with what the daemon sees now.
MEASURE_EVERY_S = 60.0


def inputs_of(snapshot: dict[str, Any]) -> dict[str, Any]:
    """What `capacity.measure` takes from the daemon's present state (its status view)."""
    bulk = [g for g in snapshot["line_groups"] if g["type"] == "bulk"]
    return {
        "bulk_groups": {g["name"]: len(g["agents"]) for g in bulk},
        "held_now": {g["name"] for g in bulk if g["holder"] is not None},
        "phones_total": len(snapshot["modems"]),
        "phones_ready": sum(1 for m in snapshot["modems"] if m["state"] == "ready"),
        "spam_tests_queued": len(snapshot["spam_tests"]["queue"]),
        "runs_waiting": sum(1 for r in snapshot["runs"] if r.get("status") == "queued"),
    }


class ControlPlane:
    name = "control-plane"

    def __init__(
        self, runtime: Runtime, postgres: PostgresKeeper, snapshot: Callable[[], dict[str, Any]]
    ) -> None:
        self.runtime = runtime
        self.postgres = postgres
        self.snapshot = snapshot
        self.conn: asyncpg.Connection | None = None
        self.last_capacity: dict[str, Any] = {}
        self.measured_at = -math.inf
        self.beats = 0
        # Seams for the unit tests (tests/unit/test_fleet.py).
        self.connect: Callable[..., Awaitable[asyncpg.Connection]] = asyncpg.connect
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    async def _measure(self, timeout_s: float) -> dict[str, Any]:
        """This interval's capacity; while the node's own PostgreSQL is down, the last one
        with the reason (the heartbeat still goes: the node is alive)."""
        node_id = self.runtime.config.node.id
        inputs = inputs_of(self.snapshot())
        if self.last_capacity and time.monotonic() - self.measured_at < MEASURE_EVERY_S:
            return self._with_present(self.last_capacity, inputs)
        try:
            pool = self.postgres.require()
            async with pool.acquire(timeout=timeout_s) as conn:
                async with asyncio.timeout(timeout_s):
                    measured = await capacity.measure(
                        conn, node_id, self.runtime.clock.now(), **inputs
                    )
        except (*PG_ERRORS, DependencyDown) as exc:
            stale = dict(self.last_capacity)
            stale["unmeasured"] = f"the node's PostgreSQL: {type(exc).__name__}: {exc}"
            stale["headroom"] = {
                "score": 0.0,
                "verdict": "unknown",
                "reasons": [f"capacity not measured: {stale['unmeasured']}"],
            }
            return stale
        self.last_capacity = measured
        self.measured_at = time.monotonic()
        return measured

    @staticmethod
    def _with_present(last: dict[str, Any], inputs: dict[str, Any]) -> dict[str, Any]:
        """The last measurement with what is true now: groups held, phones ready, tests
        queued, runs waiting (a busy node must not look idle until the next measurement)."""
        out: dict[str, Any] = json.loads(json.dumps(last))
        for group in out["bulk_groups"]:
            group["held_now"] = group["name"] in inputs["held_now"]
        out["phones"]["ready"] = inputs["phones_ready"]
        out["phones"]["total"] = inputs["phones_total"]
        out["phones"]["spam_tests_queued"] = inputs["spam_tests_queued"]
        out["runs_waiting"] = inputs["runs_waiting"]
        out["headroom"] = capacity.verdict(out)
        return out

    async def beat(self) -> str:
        """One heartbeat; the central server's time it was stamped with."""
        config = self.runtime.config
        section = config.control_plane
        timeout = section.timeout_s
        measured = await self._measure(timeout)
        if self.conn is None or self.conn.is_closed():
            self.conn = await self.connect(
                section.dsn.get_secret_value(), timeout=timeout, command_timeout=timeout
            )
        stamped = await self.conn.fetchval(
            registry.HEARTBEAT_SQL,
            config.node.id,
            config.node.name,
            section.advertise_url,
            self.runtime.version,
            json.dumps(measured),
            section.heartbeat_interval_s,
            timeout=timeout,
        )
        self.beats += 1
        return str(stamped)

    async def _drop(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.terminate()

    async def run(self, health: Health) -> None:
        where = registry.safe_dsn(self.runtime.config.control_plane.dsn.get_secret_value())
        metrics = self.runtime.metrics
        try:
            while True:
                section = self.runtime.config.control_plane
                started = time.monotonic()
                try:
                    async with asyncio.timeout(section.timeout_s * 3):
                        await self.beat()
                    metrics.heartbeat_last.labels(CONTROL_PLANE_STORE).set_to_current_time()
                    # A reason that stays the same: a change of state is logged, a beat not.
                    health.running(f"heartbeats to {where}")
                except PG_ERRORS as exc:
                    metrics.heartbeat_failures.labels(CONTROL_PLANE_STORE).inc()
                    await self._drop()
                    reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                    what = "refused" if isinstance(exc, asyncpg.PostgresError) else "unreachable"
                    health.degraded(f"central registry {where} {what}: {reason}")
                elapsed = time.monotonic() - started
                await self.sleep(max(0.0, section.heartbeat_interval_s - elapsed))
        finally:
            await self._drop()
