"""The node's counters and histograms: what happened since the daemon started, for graphs
and alerts (`GET /metrics`, docs/status-api.md).

One `NodeMetrics` per running node, on the node's own registry (never the process-wide
default one, so two nodes in one test process count apart). The status snapshot's gauges
join the same registry in `daemon/node.py`. Components count an event with one line
where it happens; this module decides nothing about the events themselves.

Labels stay bounded: agents, groups, modems, carriers, statuses, verdicts and reasons come
from the configuration or from closed sets; a result code outside the known ones is
``other``. Run ids, test ids and phone numbers are never labels.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from config.model import NodeConfig
from dispatch.agent_tables import KAKAO_UNCERTAIN, PENDING_CODES, SPAM_CODES, SUCCESS_CODES
from dispatch.outcomes import SYSTEMIC_CODES
from dispatch.store.runs import RunStatus

# Result codes that keep a label of their own (docs: DOMAIN.md's list); the rest are
# counted as "other", so an agent reporting odd codes cannot grow the series without bound.
KNOWN_CODES = frozenset(
    {
        *SUCCESS_CODES,
        *PENDING_CODES,
        KAKAO_UNCERTAIN,
        *SPAM_CODES,
        *SYSTEMIC_CODES,
        7,
        8,
        9,
        10,
        62,
        70,
        71,
        2008,
        3004,
        4000,
        5004,
        9002,
        9007,
        9012,
        9013,
        9014,
    }
)

# A handoff batch is one LOAD DATA per agent table: milliseconds to seconds.
BATCH_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# A test text reaches a handset in seconds; KT often needs 12-15 s; a test gives up at 60 s.
RECEIPT_BUCKETS_S = (1.0, 2.0, 3.0, 5.0, 8.0, 10.0, 12.0, 15.0, 20.0, 30.0, 45.0, 60.0, 120.0)


# The closed sets some labels come from.
FAILOVER_REASONS = ("unreachable", "stalled", "drained")
MODEM_RECOVERY_REASONS = ("hung", "port_lost", "driver_error", "receipt_failed")
STORES = ("postgres", "redis")
CONTROL_PLANE_STORE = "control-plane"
# The answers a socket's series start with at zero: served, and refused by its roles.
SHOWN_STATUSES = ("200", "403")


class Outcome:
    """The `outcome` label of `hanjullo_results_total`."""

    SUCCESS = "success"
    FAIL = "fail"
    PENDING_TIMEOUT = "pending_timeout"


def code_label(code: int) -> str:
    return str(code) if code in KNOWN_CODES else "other"


class NodeMetrics:
    """Every counter and histogram of one node (names as exposed, `_total` included)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # ---- the sending path
        self.rows_handed = Counter(
            "hanjullo_rows_handed",
            "Rows written into the agents' tables",
            ["group", "agent"],
            registry=r,
        )
        self.results = Counter(
            "hanjullo_results",
            "Recipients' final results recorded, by outcome",
            ["outcome"],
            registry=r,
        )
        self.result_codes = Counter(
            "hanjullo_result_codes",
            "Recipients' final results recorded, by status code (unknown codes: other)",
            ["code"],
            registry=r,
        )
        self.run_status_changes = Counter(
            "hanjullo_run_status_changes",
            "Runs that entered a status",
            ["status"],
            registry=r,
        )
        self.breaker_trips = Counter(
            "hanjullo_breaker_trips",
            "Runs paused by the circuit breaker",
            registry=r,
        )
        self.handoff_batch = Histogram(
            "hanjullo_handoff_batch_seconds",
            "Time to write one handoff batch into the agents' tables",
            ["group"],
            buckets=BATCH_BUCKETS_S,
            registry=r,
        )
        self.failovers = Counter(
            "hanjullo_failovers",
            "Agents taken out of service by failover, by reason",
            ["agent", "reason"],
            registry=r,
        )
        self.failover_rows = Counter(
            "hanjullo_failover_rows_moved",
            "Waiting rows moved off an agent that was out of service",
            ["agent"],
            registry=r,
        )
        self.lease_losses = Counter(
            "hanjullo_lease_losses",
            "Line-group leases found taken by someone else",
            ["group"],
            registry=r,
        )
        # ---- the test phones and spam tests
        self.receipts = Counter(
            "hanjullo_receipts",
            "Messages a test phone received and the node recorded",
            ["modem", "carrier"],
            registry=r,
        )
        self.modem_recoveries = Counter(
            "hanjullo_modem_recoveries",
            "Times a modem's session ended and was recovered, by reason",
            ["modem", "reason"],
            registry=r,
        )
        self.spam_verdicts = Counter(
            "hanjullo_spam_verdicts",
            "Spam-test verdicts per carrier",
            ["carrier", "verdict", "source"],
            registry=r,
        )
        self.receipt_delay = Histogram(
            "hanjullo_spam_receipt_delay_seconds",
            "From a test row's insert to its receipt on the carrier's phone",
            ["carrier"],
            buckets=RECEIPT_BUCKETS_S,
            registry=r,
        )
        self.canary_misses = Counter(
            "hanjullo_canary_misses",
            "Canaries a test phone missed (its verdicts are device_error until one passes)",
            ["modem"],
            registry=r,
        )
        # ---- the sockets
        self.api_requests = Counter(
            "hanjullo_api_requests",
            "Requests answered on the daemon's sockets (status, and the proxy's read and "
            "control sockets), by HTTP status",
            ["socket", "status"],
            registry=r,
        )
        # ---- the stores
        self.heartbeat_failures = Counter(
            "hanjullo_heartbeat_failures",
            "Heartbeats that could not be written",
            ["store"],
            registry=r,
        )
        self.heartbeat_last = Gauge(
            "hanjullo_heartbeat_last_success_timestamp_seconds",
            "Unix time of the last heartbeat written",
            ["store"],
            registry=r,
        )

    def count_results(self, codes: Iterable[int]) -> None:
        """Final results just recorded (each recipient once)."""
        for code in codes:
            outcome = Outcome.SUCCESS if code in SUCCESS_CODES else Outcome.FAIL
            self.results.labels(outcome).inc()
            self.result_codes.labels(code_label(code)).inc()

    def count_request(self, socket: str, status: int) -> None:
        """One answer on a socket; the status is HTTP's, a closed set of codes."""
        self.api_requests.labels(socket, str(status)).inc()

    def show_from_start(self, config: NodeConfig) -> None:
        """Create the configured agents', groups', modems' and stores' series at zero, so
        every metric is on the first scrape and rate(), increase() and absent() work
        before the first event."""
        for group in config.line_groups:
            self.lease_losses.labels(group.name)
            self.handoff_batch.labels(group.name)
            for agent in group.agents:
                self.rows_handed.labels(group.name, str(agent))
                self.failover_rows.labels(str(agent))
                for reason in FAILOVER_REASONS:
                    self.failovers.labels(str(agent), reason)
        for modem in config.modems:
            self.receipts.labels(modem.label, modem.carrier.value)
            self.canary_misses.labels(modem.label)
            self.receipt_delay.labels(modem.carrier.value)
            for reason in MODEM_RECOVERY_REASONS:
                self.modem_recoveries.labels(modem.label, reason)
        for store in STORES:
            self.heartbeat_failures.labels(store)
        if config.control_plane.dsn.get_secret_value():
            # The heartbeat into the central registry (docs/fleet.md), when there is one.
            self.heartbeat_failures.labels(CONTROL_PLANE_STORE)
        for socket in ("status", *(("read", "control") if config.api.proxy_user else ())):
            for status in SHOWN_STATUSES:
                self.api_requests.labels(socket, status)
        for outcome in (Outcome.SUCCESS, Outcome.FAIL, Outcome.PENDING_TIMEOUT):
            self.results.labels(outcome)
        for status in RunStatus:
            self.run_status_changes.labels(status.value)
