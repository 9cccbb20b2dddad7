"""The running node: components composed under one supervisor, the status API,
the systemd lifecycle and signal handling.

READY=1 is sent once the status socket serves; it waits for neither agents nor
modems (nor the proxy's sockets, `[api]`). SIGTERM/SIGINT stop every component
within the stop timeout, close the ports and remove the sockets. SIGHUP reloads
the sections that are safe to reload and logs which changes need a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

import structlog
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from config.clocksync import ClockSync, system_clock_sync
from config.loader import ConfigError, load_daemon_config
from config.logs import setup_for
from daemon import receipts
from daemon.agents import AgentMonitor, AgentState
from daemon.api import NodeAPI
from daemon.controlplane import ControlPlane
from daemon.dispatcher import Dispatcher
from daemon.housekeeping import Housekeeping
from daemon.http import ProxyRoles, SocketRoles, UnixHTTPServer
from daemon.modems import ModemManager
from daemon.role import WriterState
from daemon.runtime import Runtime, diff_sections
from daemon.spamtest import SpamTestEngine
from daemon.stores import PostgresKeeper, RedisKeeper
from daemon.supervisor import Component, ComponentState, Health, Supervisor
from daemon.systemd import Notifier, watchdog_interval_s
from dispatch.outcomes import BREAKER_REASON_PREFIX
from dispatch.spamtests import store as spam_store
from dispatch.store import intake
from dispatch.store.runs import ACTIVE

log = structlog.get_logger("node")

# How often STATUS= is refreshed for `systemctl status`.
STATUS_NOTIFY_INTERVAL_S = 10.0
# The header in which nginx names the client certificate's subject (systemd/nginx/); the
# proxy's sockets trust it, for the log, because only nginx's user may connect to them.
PROXY_CLIENT_HEADER = "x-hanjullo-client"
AGENT_STATES = [s.value for s in AgentState]
RUN_STATUSES = [s.value for s in ACTIVE]


class StatusServer:
    """The status socket as a supervised component."""

    name = "status-server"

    def __init__(self, node: Node) -> None:
        self.node = node
        section = node.runtime.config.socket
        self.server = UnixHTTPServer(
            section.path,
            node.api.routes(),
            mode=section.mode,
            group=section.group,
            max_body_bytes=section.max_body_bytes,
            roles=SocketRoles(section.operator_group),
            request_timeout_s=section.request_timeout_s,
            write_timeout_s=section.write_timeout_s,
            max_connections=section.max_connections,
            observer=node.runtime.metrics.count_request,
        )
        self.serving = asyncio.Event()

    async def run(self, health: Health) -> None:
        await self.server.start()
        self.serving.set()
        health.running(str(self.server.path))
        try:
            await asyncio.Event().wait()
        finally:
            self.serving.clear()
            await self.server.close()


class ProxySockets:
    """The two sockets nginx forwards to (`[api]`, systemd/nginx/): the read socket serves
    every GET route, the control socket every route; both serve nginx's user alone.

    A component of its own, so a broken `[api]` (a missing group) degrades it and leaves
    the status socket serving."""

    name = "api-sockets"

    def __init__(self, node: Node) -> None:
        api = node.runtime.config.api
        limits = node.runtime.config.socket
        self.servers = [
            UnixHTTPServer(
                path,
                node.api.routes(),
                mode=0o660,
                group=api.group,
                max_body_bytes=limits.max_body_bytes,
                roles=ProxyRoles(api.proxy_user, controls=controls),
                request_timeout_s=limits.request_timeout_s,
                write_timeout_s=limits.write_timeout_s,
                max_connections=limits.max_connections,
                name=name,
                client_header=PROXY_CLIENT_HEADER,
                observer=node.runtime.metrics.count_request,
                directory_group=True,
            )
            for name, path, controls in (
                ("read", api.read_socket, False),
                ("control", api.control_socket, True),
            )
        ]

    async def run(self, health: Health) -> None:
        try:
            for server in self.servers:
                await server.start()
            health.running(", ".join(str(s.path) for s in self.servers))
            await asyncio.Event().wait()
        finally:
            for server in self.servers:
                await server.close()


class _SnapshotCollector(Collector):
    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.snapshot = snapshot

    def describe(self) -> list[Any]:
        # Nothing to check at registration: the names are this class's own.
        return []

    def collect(self) -> Any:
        snap = self.snapshot()
        node = snap["node"]["id"]
        yield gauge(
            "hanjullo_uptime_seconds",
            "Seconds since the daemon started",
            ["node"],
            [([node], snap["node"]["uptime_s"])],
        )
        sync = snap["node"]["clock_sync"]
        if sync["synchronised"] is not None:
            yield gauge(
                "hanjullo_clock_synchronised",
                "1 while the kernel says the system clock is synchronised (NTP/PTP)",
                ["node"],
                [([node], flag(sync["synchronised"]))],
            )
        if sync["max_error_s"] is not None:
            yield gauge(
                "hanjullo_clock_max_error_seconds",
                "The kernel's bound on the system clock's error",
                ["node"],
                [([node], sync["max_error_s"])],
            )
        yield gauge(
            "hanjullo_component_state",
            "1 for the state each component is in",
            ["component", "state"],
            [
                ([c["name"], state.value], flag(c["state"] == state))
                for c in snap["components"]
                for state in ComponentState
            ],
        )
        # With no due row (a known backlog) the oldest due row is 0 s old, not unknown.
        agents = [
            (
                [str(a["number"]), a["group"]],
                a
                | {
                    "oldest_waiting_s": 0
                    if a["oldest_waiting_s"] is None and a["due"] == 0
                    else a["oldest_waiting_s"]
                },
            )
            for a in snap["agents"]
        ]
        for name, doc, field, value in (
            (
                "hanjullo_agent_reachable",
                "1 when the agent's admin port accepts connections",
                "reachable",
                flag,
            ),
            ("hanjullo_agent_waiting_rows", "Rows with rsv1=1", "waiting", float),
            (
                "hanjullo_agent_oldest_waiting_seconds",
                "Age of the oldest due waiting row",
                "oldest_waiting_s",
                float,
            ),
        ):
            yield gauge(
                name,
                doc,
                ["agent", "group"],
                [(key, value(a[field])) for key, a in agents if a[field] is not None],
            )
        yield gauge(
            "hanjullo_agent_state",
            "1 for the state each agent is in (ok, unreachable, stalled, unknown)",
            ["agent", "group", "state"],
            [
                ([str(a["number"]), a["group"], state], flag(a["state"] == state))
                for a in snap["agents"]
                for state in AGENT_STATES
            ],
        )
        runs = snap["runs"]
        yield gauge(
            "hanjullo_runs",
            "Campaign runs of this node in each active status",
            ["status"],
            [([s], sum(1 for r in runs if r.get("status") == s)) for s in RUN_STATUSES],
        )
        yield gauge(
            "hanjullo_runs_paused_by_breaker",
            "Runs paused by the circuit breaker, waiting for an operator",
            ["node"],
            [
                (
                    [node],
                    sum(
                        1
                        for r in runs
                        if r.get("status") == "paused"
                        and str(r.get("reason") or "").startswith(BREAKER_REASON_PREFIX)
                    ),
                )
            ],
        )
        yield gauge(
            "hanjullo_modem_ready",
            "1 while the test phone's modem is ready",
            ["modem", "carrier"],
            [([m["name"], m["carrier"]], flag(m["state"] == "ready")) for m in snap["modems"]],
        )
        yield gauge(
            "hanjullo_handoff_failures",
            "Handoff tasks that failed and were restarted since the daemon started",
            ["node"],
            [([node], snap["dispatch"]["handoff_failures"])],
        )
        spam = snap["spam_tests"]
        yield gauge(
            "hanjullo_spam_tests",
            "Spam-filter tests queued or active",
            ["state"],
            [(["queued"], len(spam["queue"])), (["active"], len(spam["active"]))],
        )
        yield gauge(
            "hanjullo_spam_grace_seconds",
            "Grace before a carrier is called blocked",
            ["carrier"],
            [([carrier], seconds) for carrier, seconds in spam["grace_s"].items()],
        )
        yield gauge(
            "hanjullo_spam_phone_flagged",
            "1 while the test phone's last canary was missed",
            ["modem", "carrier"],
            [([p["modem"], p["carrier"]], flag(p["flagged"])) for p in spam["phones"]],
        )


def flag(value: object) -> float:
    return 1.0 if value else 0.0


def gauge(
    name: str, doc: str, labels: list[str], samples: Iterable[tuple[list[str], float]]
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=labels)
    for values, value in samples:
        family.add_metric(values, value)
    return family


class Node:
    def __init__(self, runtime: Runtime, notifier: Notifier | None = None) -> None:
        self.runtime = runtime
        self.notifier = notifier or Notifier()
        supervision = runtime.config.supervision
        self.supervisor = Supervisor(supervision.backoff_initial_s, supervision.backoff_max_s)
        self.api: NodeAPI = NodeAPI(self)
        self.status_server = StatusServer(self)
        self.postgres = PostgresKeeper(runtime)
        self.redis = RedisKeeper(runtime)
        self.agents = AgentMonitor(runtime)
        self.housekeeping = Housekeeping(runtime)
        # The node's writer role: the dispatcher takes it; the modems and the spam-test
        # engine act only while this daemon holds it (a second daemon stays passive).
        self.role = WriterState()
        self.modems = [
            ModemManager(runtime, m, self.postgres, self.role) for m in runtime.config.modems
        ]
        self.housekeeping.add_job("prune-receipts", self._prune_receipts, hour=3, minute=30)
        self.dispatcher = Dispatcher(runtime, self.postgres, self.redis, self.agents, self.role)
        self.housekeeping.add_job("prune-runs", self._prune_runs, hour=4, minute=10)
        self.spam_tests = SpamTestEngine(
            runtime, self.postgres, self.agents, self.modems, self.role
        )
        components: list[Component] = [
            self.status_server,
            self.postgres,
            self.redis,
            self.agents,
            self.housekeeping,
            self.dispatcher,
            self.spam_tests,
            *self.modems,
        ]
        if runtime.config.api.proxy_user:
            components.insert(1, ProxySockets(self))
        # A node with no registry to heartbeat into has no `control-plane` component.
        self.control_plane: ControlPlane | None = None
        if runtime.config.control_plane.dsn.get_secret_value():
            self.control_plane = ControlPlane(runtime, self.postgres, self.snapshot)
            components.append(self.control_plane)
        for component in components:
            self.supervisor.add(component)
        self.stop_requested = asyncio.Event()
        metrics = runtime.metrics
        metrics.show_from_start(runtime.config)
        # The counters (daemon/metrics.py) and the snapshot's gauges on one registry.
        self._registry = metrics.registry
        # Whether the system clock is synchronised (tests replace it).
        self.clock_sync: Callable[[], ClockSync] = system_clock_sync
        self._registry.register(_SnapshotCollector(self.snapshot))

    # ---- status -------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        config = self.runtime.config
        return {
            "node": {
                "id": config.node.id,
                "name": config.node.name,
                "version": self.runtime.version,
                "started_at": self.runtime.started_at.isoformat(),
                "uptime_s": round(self.runtime.uptime_s(), 3),
                "clock": self.runtime.clock.now_kst().isoformat(),
                "clock_sync": self.clock_sync().as_json(),
            },
            "components": [s.as_json() for s in self.supervisor.statuses()],
            "agents": [s.as_json() for s in self.agents.statuses.values()],
            "line_groups": [
                {
                    "name": g.name,
                    "type": g.type.value,
                    "agents": list(g.agents),
                    "holder": self._holder(g.name),
                    "since": (self.dispatcher.holders.get(g.name) or {}).get("since"),
                }
                for g in config.line_groups
            ],
            "modems": [m.as_json() for m in self.modems],
            "runs": self.dispatcher.status_runs,
            "dispatch": {
                "handoff_failures": self.dispatcher.handoff_failures,
                "writer": self.dispatcher.writer_status,
            },
            "spam_tests": self.spam_tests.snapshot(),
        }

    async def _prune_receipts(self) -> None:
        retention = timedelta(days=self.runtime.config.phones.receipt_retention_days)
        pool = self.postgres.require()
        pruned = await receipts.prune(pool, self.runtime.config.node.id, retention)
        # Canaries are the daemon's own tests; their verdicts live as long as receipts.
        async with pool.acquire() as conn:
            canaries = await spam_store.prune_canaries(conn, self.runtime.config.node.id, retention)
        log.info("receipts pruned", count=pruned, canaries=canaries)

    def _holder(self, group: str) -> dict[str, Any] | None:
        held = self.dispatcher.holders.get(group)
        return None if held is None else {"company": held["company"], "run_id": held["run_id"]}

    async def _prune_runs(self) -> None:
        days = int(self.runtime.config.dispatch.prune_after_days)
        async with self.postgres.require().acquire() as conn:
            result = await intake.prune_finished(conn, self.runtime.config.node.id, days)
        log.info("finished runs' recipients pruned", result=result)

    def summary(self) -> str:
        statuses = self.supervisor.statuses()
        degraded = [s.name for s in statuses if s.state == ComponentState.DEGRADED]
        ready = sum(1 for m in self.modems if m.ready)
        agents_ok = sum(1 for a in self.agents.statuses.values() if a.state == "ok")
        text = (
            f"agents ok {agents_ok}/{len(self.agents.statuses)}, "
            f"modems ready {ready}/{len(self.modems)}"
        )
        return text + (f"; degraded: {', '.join(degraded)}" if degraded else "")

    # ---- lifecycle ----------------------------------------------------------------------
    def request_stop(self) -> None:
        self.stop_requested.set()

    def reload(self) -> None:
        path = self.runtime.config_path
        if path is None:
            log.warning("reload ignored: no configuration file")
            return
        try:
            new = load_daemon_config(path)
        except ConfigError as exc:
            log.error(
                "reload refused, keeping the running configuration",
                problems=[str(p) for p in exc.problems],
            )
            return
        live, restart = diff_sections(self.runtime.config, new)
        if restart:
            log.warning(
                "reload: these sections changed and need a restart; keeping their running values",
                sections=restart,
            )
        if live:
            merged = self.runtime.config.model_copy(
                update={name: getattr(new, name) for name in live}
            )
            self.runtime.config = merged
            if "logging" in live:
                setup_for(merged.logging)
        log.info("configuration reloaded", applied=live, needs_restart=restart)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        self.supervisor.start()
        side_tasks = [asyncio.create_task(self._announce_ready(), name="announce-ready")]
        watchdog = watchdog_interval_s()
        if watchdog is not None:
            side_tasks.append(asyncio.create_task(self._watchdog(watchdog), name="watchdog"))
        log.info(
            "daemon started", node=self.runtime.config.node.id, pid_version=self.runtime.version
        )
        await self.stop_requested.wait()
        log.info("stopping")
        self.notifier.notify("STOPPING=1", "STATUS=stopping")
        for task in side_tasks:
            task.cancel()
        await asyncio.gather(*side_tasks, return_exceptions=True)
        await self.supervisor.stop(self.runtime.config.supervision.stop_timeout_s)
        with contextlib.suppress(Exception):
            await self.redis.close()
        self.notifier.close()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        log.info("stopped")
        return 0

    async def _announce_ready(self) -> None:
        await self.status_server.serving.wait()
        self.notifier.notify("READY=1", f"STATUS={self.summary()}")
        log.info("ready", socket=str(self.status_server.server.path))
        while True:
            await asyncio.sleep(STATUS_NOTIFY_INTERVAL_S)
            self.notifier.notify(f"STATUS={self.summary()}")

    async def _watchdog(self, interval_s: float) -> None:
        # The ping comes from the event loop itself: a blocked loop stops it.
        while True:
            self.notifier.notify("WATCHDOG=1")
            await asyncio.sleep(interval_s)
