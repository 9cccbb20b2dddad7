"""The spam-test engine: queue, phones, sends, receipt matching, verdicts, canaries.

A test holds one phone per carrier while it runs (receipt attribution), sends one
row per (phone × message type) into the test group's agent table with
``app_etc1`` = test id, and decides each carrier as soon as it can: ``pass`` the
moment the receipt is recorded, ``failed`` on the agent's failure code,
``blocked`` when the agent reported success, the phone was watched throughout
and nothing arrived within the carrier's grace, ``timeout`` when the agent never
reported, and ``device_error`` instead of the last two whenever the phone was not
watched throughout. A phone frees as soon as its carrier is decided, and the
test completes when every carrier is.

Everything a restart needs is in PostgreSQL: the phones of a test are in its
result rows, a row's agent sequence number is written after the MySQL commit,
and a row without one is looked for in the agent tables before anything is sent
again. Receipts are attributed from ``modem_receipts.match IS NULL`` in id order,
so one recorded while the engine was down is attributed after it starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import aiomysql
import asyncpg
import structlog

from config.clock import KST
from config.logs import mask_phones
from config.model import ModemConfig
from config.names import GroupType, MessageType, checked_table
from daemon.agents import MYSQL_ERRORS, AgentMonitor, agent_is_down
from daemon.modems import ModemManager
from daemon.runtime import Runtime
from daemon.stores import PG_ERRORS, PostgresKeeper
from daemon.supervisor import DependencyDown, Health
from dispatch import agent_tables, handoff
from dispatch.agent_tables import PENDING_CODES, SUCCESS_CODES, transaction
from dispatch.fairness import Row, fair_order
from dispatch.runs import source_ref
from dispatch.spamtests import (
    CARRIERS,
    NOTIFY_CHANNEL,
    Decision,
    Expected,
    SlotFacts,
    SpamTestSpec,
    TestStatus,
    Verdict,
    create_tests,
    decide,
    expected_hash,
    grace_for,
    overall,
)

log = structlog.get_logger("spamtests")

ERRORS = (*MYSQL_ERRORS, *PG_ERRORS)
# Receipts attributed per pass; the rest wait for the next pass.
RECEIPT_BATCH = 200
# How far back a receipt may be attributed late to a decided test.
LATE_HORIZON = timedelta(days=1)
# Poll interval while no test is active (queue and canaries only).
IDLE_POLL_S = 2.0
# How long after the start queued tests wait for modems still opening for the first time.
STARTUP_WAIT_S = 30.0
RECENT = 10
# How far back a test's agent row is looked for in log tables: this month and the last.
LOG_LOOKBACK = timedelta(days=31)


@dataclass(slots=True)
class Slot:
    """One carrier × message type of an active test."""

    result_id: int
    carrier: str
    mtype: MessageType  # SMS | LMS
    modem: str | None
    phone: str | None
    table: str | None
    expected: Expected
    seqno: int | None = None
    inserted_at: datetime | None = None
    agent_code: int | None = None
    success_seen_at: datetime | None = None
    received_at: datetime | None = None
    result: str | None = None
    detail: str | None = None

    @property
    def sendable(self) -> bool:
        return self.modem is not None and self.table is not None


@dataclass(slots=True)
class ActiveTest:
    id: uuid.UUID
    company: str | None
    source: str
    callback: str
    sms_text: str | None
    lms_text: str | None
    subject: str | None
    run_id: uuid.UUID | None
    variant: str | None
    batch_id: uuid.UUID | None
    created_at: datetime
    started_at: datetime
    target_modem: str | None = None
    slots: list[Slot] = field(default_factory=list)

    def text_for(self, mtype: MessageType) -> str:
        text = self.sms_text if mtype == MessageType.SMS else self.lms_text
        assert text is not None
        return text


class SpamTestEngine:
    name = "spam-tests"

    def __init__(
        self,
        runtime: Runtime,
        postgres: PostgresKeeper,
        agents: AgentMonitor,
        modems: Sequence[ModemManager],
    ) -> None:
        self.runtime = runtime
        self.postgres = postgres
        self.agents = agents
        self.modems = {m.modem.label: m for m in modems}
        self.mysql: aiomysql.Pool | None = None
        self.wake = asyncio.Event()
        self.lock = asyncio.Lock()
        self.active: dict[uuid.UUID, ActiveTest] = {}
        self.busy: dict[str, uuid.UUID] = {}  # modem label -> test holding it
        self.freed_at: dict[str, datetime] = {}
        self.samples: dict[str, deque[float]] = {}
        self.flagged: dict[str, datetime] = {}  # modem label -> canary missed at
        self.last_canary: dict[str, dict[str, Any]] = {}
        self.last_served: dict[str | None, datetime] = {}
        self.queue_view: list[dict[str, Any]] = []
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self._rr = 0
        self._canary_due: dict[str, float] = {}
        self._started = 0.0
        self._log_table_cache: dict[tuple[str, date], list[str]] = {}
        for manager in modems:
            manager.receipt_listeners.append(self._on_receipt)

    # ---- config -------------------------------------------------------------------------
    @property
    def node_id(self) -> str:
        return self.runtime.config.node.id

    @property
    def section(self) -> Any:
        return self.runtime.config.spam_tests

    def grace(self, carrier: str) -> float:
        return grace_for(list(self.samples.get(carrier, ())), self.section)

    def test_tables(self) -> list[tuple[int, str]]:
        config = self.runtime.config
        out = []
        for group in config.line_groups:
            if group.type == GroupType.TEST:
                out += [(n, config.agent(n).table) for n in group.agents]
        return out

    def _pick_table(self) -> str | None:
        tables = self.test_tables()
        if not tables:
            return None
        healthy = [t for n, t in tables if not agent_is_down(self.agents.statuses.get(n))] or [
            t for _, t in tables
        ]
        self._rr += 1
        return healthy[self._rr % len(healthy)]

    def _modem_configs(self, carrier: str) -> list[ModemConfig]:
        return [m for m in self.runtime.config.modems if m.carrier.value == carrier]

    # ---- component ----------------------------------------------------------------------
    def _on_receipt(self, _receipt_id: int) -> None:
        self.wake.set()

    def _notified(self, *_: object) -> None:
        self.wake.set()

    async def run(self, health: Health) -> None:
        await self.postgres.wait_ready()
        self._started = asyncio.get_running_loop().time()
        self.mysql = await agent_tables.create_pool(self.runtime.config.mysql, maxsize=3)
        try:
            async with self.postgres.listening(NOTIFY_CHANNEL, self._notified):
                await self.restore()
                health.running()
                while True:
                    # Cleared before the pass: a receipt recorded during it wakes the next one.
                    self.wake.clear()
                    try:
                        async with self.lock:
                            await self.tick()
                        health.running()
                    except (*ERRORS, DependencyDown) as exc:
                        health.degraded(f"{type(exc).__name__}: {exc}")
                    interval = self.section.poll_interval_s if self.active else IDLE_POLL_S
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.wake.wait(), interval)
        finally:
            await agent_tables.close_pool(self.mysql)
            self.mysql = None

    def _pg(self) -> asyncpg.Pool:
        return self.postgres.require()

    def _my(self) -> aiomysql.Pool:
        if self.mysql is None:
            raise DependencyDown("mysql pool not ready")
        return self.mysql

    # ---- restore ------------------------------------------------------------------------
    async def restore(self) -> None:
        """Active tests, grace samples, canary flags and fairness from PostgreSQL."""
        self.active.clear()
        self.busy.clear()
        async with self._pg().acquire() as conn:
            tests = await conn.fetch(
                "SELECT * FROM spam_filter_tests WHERE node_id = $1 AND status = 'active'",
                self.node_id,
            )
            for row in tests:
                test = self._active_from(row)
                results = await conn.fetch(
                    "SELECT * FROM spam_filter_test_results WHERE test_id = $1 ORDER BY id",
                    row["id"],
                )
                for r in results:
                    slot = Slot(
                        r["id"],
                        r["carrier"],
                        MessageType(r["message_type"]),
                        r["modem"],
                        r["phone"],
                        r["sms_table"],
                        Expected.of(
                            MessageType(r["message_type"]),
                            row["callback_number"],
                            r["message_hash"],
                            row["message_subject"],
                            row["message_content_lms"],
                        ),
                        r["sms_msgkey"],
                        r["inserted_at"],
                        r["status_code"],
                        r["success_seen_at"],
                        r["received_at"],
                        r["result"],
                        r["detail"],
                    )
                    test.slots.append(slot)
                    if slot.result is None and slot.modem is not None:
                        self.busy[slot.modem] = test.id
                self.active[test.id] = test
                log.info("spam test resumed", test=str(test.id), slots=len(test.slots))
            labels = list(self.modems)
            rows = await conn.fetch(
                """SELECT carrier, delay FROM (
                       SELECT carrier,
                              extract(epoch FROM received_at - success_seen_at)::float8
                                  AS delay,
                              row_number() OVER (PARTITION BY carrier
                                                 ORDER BY decided_at DESC) AS n
                       FROM spam_filter_test_results r JOIN spam_filter_tests t
                            ON t.id = r.test_id AND t.node_id = $3
                       WHERE modem = ANY($1::text[]) AND success_seen_at IS NOT NULL
                         AND result = 'pass' AND received_at IS NOT NULL) s
                   WHERE n <= $2 ORDER BY n DESC""",
                labels,
                self.section.grace_samples,
                self.node_id,
            )
            self.samples = {}
            for r in rows:
                self._sample(r["carrier"], r["delay"])
            late = await conn.fetch(
                """SELECT r.carrier, extract(epoch FROM m.received_at - r.success_seen_at)::float8
                          AS delay
                   FROM spam_filter_test_results r JOIN modem_receipts m
                        ON m.id = r.late_receipt_id AND m.node_id = $3
                   WHERE r.modem = ANY($1::text[]) AND r.late AND r.success_seen_at IS NOT NULL
                   ORDER BY r.decided_at DESC LIMIT $2""",
                labels,
                self.section.grace_samples,
                self.node_id,
            )
            for r in late:
                self._sample(r["carrier"], r["delay"])
            canaries = await conn.fetch(
                """SELECT DISTINCT ON (target_modem) target_modem, overall, completed_at
                   FROM spam_filter_tests
                   WHERE node_id = $1 AND source = 'canary' AND status = 'completed'
                   ORDER BY target_modem, completed_at DESC""",
                self.node_id,
            )
            for c in canaries:
                self.last_canary[c["target_modem"]] = {
                    "at": c["completed_at"].isoformat(),
                    "verdict": c["overall"],
                }
                if c["overall"] == Verdict.BLOCKED:
                    self.flagged[c["target_modem"]] = c["completed_at"]
            served = await conn.fetch(
                """SELECT company_id, max(started_at) AS at FROM spam_filter_tests
                   WHERE node_id = $1 AND started_at IS NOT NULL GROUP BY company_id""",
                self.node_id,
            )
            self.last_served = {r["company_id"]: r["at"] for r in served}

    def _sample(self, carrier: str, delay: float | None) -> None:
        if delay is None:
            return
        samples = self.samples.setdefault(carrier, deque(maxlen=self.section.grace_samples))
        samples.append(max(0.0, float(delay)))

    @staticmethod
    def _active_from(row: Row) -> ActiveTest:
        return ActiveTest(
            row["id"],
            row["company_id"],
            row["source"],
            row["callback_number"],
            row["message_content_sms"],
            row["message_content_lms"],
            row["message_subject"],
            row["run_id"],
            row["variant_id"],
            row["batch_id"],
            row["created_at"],
            row["started_at"] or datetime.now(UTC),
            row["target_modem"],
        )

    # ---- the loop -----------------------------------------------------------------------
    async def tick(self) -> None:
        """One pass. Each step runs even if an earlier one failed (MySQL down must not
        stop receipts, which need only PostgreSQL, from settling verdicts); the first
        failure is raised at the end."""
        failures: list[BaseException] = []
        for step in (
            self._send_pending,
            self._attribute_receipts,
            self._poll_agents,
            self._decide_all,
            self._queue_canaries,
            self._start_queued,
        ):
            try:
                await step()
            except (*ERRORS, DependencyDown) as exc:
                failures.append(exc)
        if failures:
            raise failures[0]

    async def _send_pending(self) -> None:
        for test in list(self.active.values()):
            await self._ensure_sent(test)

    # ---- starting -----------------------------------------------------------------------
    def _plan(self, test: Row) -> dict[str, str | None] | None:
        """A phone per carrier for this test now, None for a carrier with no usable phone
        (device_error at once), or None overall when it must wait for a busy phone."""
        carriers: Sequence[str] = CARRIERS
        pinned = test["target_modem"]
        if pinned:
            config = next((m for m in self.runtime.config.modems if m.label == pinned), None)
            if config is None:
                return {}
            carriers = [config.carrier.value]
        plan: dict[str, str | None] = {}
        for carrier in carriers:
            labels = [m.label for m in self._modem_configs(carrier)]
            if pinned:
                labels = [pinned]
            usable = [
                label
                for label in labels
                if label in self.modems
                and self.modems[label].ready
                and (pinned or label not in self.flagged)
            ]
            free = [label for label in usable if label not in self.busy]
            if free:
                floor = datetime.min.replace(tzinfo=UTC)
                plan[carrier] = min(free, key=lambda label: self.freed_at.get(label, floor))
            elif usable or any(self._opening(label) for label in labels):
                return None
            else:
                plan[carrier] = None
        return plan

    def _opening(self, label: str) -> bool:
        """A modem still in its first open after the daemon started: worth waiting for
        (up to STARTUP_WAIT_S), rather than calling its carrier a device error."""
        manager = self.modems.get(label)
        loop = asyncio.get_running_loop()
        return (
            manager is not None
            and not manager.settled
            and loop.time() - self._started < STARTUP_WAIT_S
        )

    def _unusable_reason(self, carrier: str, pinned: str | None) -> str:
        labels = [pinned] if pinned else [m.label for m in self._modem_configs(carrier)]
        if not labels:
            return f"no test phone configured for {carrier}"
        reasons = []
        for label in labels:
            manager = self.modems.get(label)
            if manager is None:
                reasons.append(f"{label}: not managed")
            elif not manager.ready:
                status = manager.status
                reasons.append(f"{label}: {status.state.value} ({status.reason})")
            elif label in self.flagged:
                reasons.append(
                    f"{label}: missed its canary at {self.flagged[label].isoformat()[:19]}"
                )
        return "; ".join(reasons) or f"no usable {carrier} phone"

    async def _start_queued(self) -> None:
        async with self._pg().acquire() as conn:
            queued = await conn.fetch(
                """SELECT * FROM spam_filter_tests WHERE node_id = $1 AND status = 'queued'
                   ORDER BY created_at, id LIMIT 500""",
                self.node_id,
            )
        order = fair_order(queued, self.last_served, arrival="created_at")
        started: set[uuid.UUID] = set()
        for test in order:
            plan = self._plan(test)
            if plan is None:
                continue
            if await self._start(test, plan):
                started.add(test["id"])
        now = datetime.now(UTC)
        self.queue_view = [
            {
                "test_id": str(t["id"]),
                "company": t["company_id"],
                "source": t["source"],
                "variant": t["variant_id"],
                "batch_id": str(t["batch_id"]) if t["batch_id"] else None,
                "target_modem": t["target_modem"],
                "waiting_s": round((now - t["created_at"]).total_seconds(), 1),
                "position": position,
            }
            for position, t in enumerate((t for t in order if t["id"] not in started), start=1)
        ]

    async def _start(self, row: Row, plan: Mapping[str, str | None]) -> bool:
        test = self._active_from(row)
        types = [
            t
            for t, text in ((MessageType.SMS, test.sms_text), (MessageType.LMS, test.lms_text))
            if text
        ]
        table = self._pick_table()
        slots: list[Slot] = []
        for carrier, label in plan.items():
            config = next((m for m in self.runtime.config.modems if m.label == label), None)
            for mtype in types:
                reason = None
                if label is None:
                    reason = self._unusable_reason(carrier, row["target_modem"])
                elif table is None:
                    reason = "no test line group configured"
                text_hash = expected_hash(mtype, test.text_for(mtype), test.subject)
                slot = Slot(
                    0,  # the result row's id, once inserted below
                    carrier,
                    mtype,
                    label if reason is None else None,
                    config.phone if config else None,
                    table if reason is None else None,
                    Expected.of(mtype, test.callback, text_hash, test.subject, test.lms_text),
                )
                if reason:
                    slot.result, slot.detail = Verdict.DEVICE_ERROR.value, reason
                slots.append(slot)
        async with self._pg().acquire() as conn, conn.transaction():
            started_at = await conn.fetchval(
                """UPDATE spam_filter_tests SET status = 'active', started_at = now()
                   WHERE id = $1 AND status = 'queued' RETURNING started_at""",
                test.id,
            )
            if started_at is None:
                return False  # cancelled meanwhile
            test.started_at = started_at
            for slot in slots:
                slot.result_id = await conn.fetchval(
                    """INSERT INTO spam_filter_test_results (test_id, carrier, message_type,
                           phone, modem, sms_table, message_hash, result, detail, decided_at)
                       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9,
                               CASE WHEN $8::text IS NULL THEN NULL ELSE now() END)
                       RETURNING id""",
                    test.id,
                    slot.carrier,
                    slot.mtype,
                    slot.phone,
                    slot.modem,
                    slot.table,
                    slot.expected.text_hash,
                    slot.result,
                    slot.detail,
                )
        test.slots = slots
        for slot in test.slots:
            if slot.result is None and slot.modem is not None:
                self.busy[slot.modem] = test.id
        self.active[test.id] = test
        self.last_served[test.company] = test.started_at
        log.info(
            "spam test started",
            test=str(test.id),
            company=test.company,
            source=test.source,
            phones={s.carrier: s.modem for s in test.slots},
        )
        await self._ensure_sent(test, fresh=True)
        return True

    async def _ensure_sent(self, test: ActiveTest, fresh: bool = False) -> None:
        """Write the test's rows that are not in the agent tables yet, in one transaction.

        A row without a recorded sequence number may have been committed to MySQL just
        before a crash (or a lost connection): unless the test was started just now
        (`fresh`), it is looked for in the live and log tables and adopted, never sent
        twice."""
        unsent = [s for s in test.slots if s.sendable and s.seqno is None and s.result is None]
        if not unsent:
            return
        async with self._my().acquire() as conn:
            for slot in [] if fresh else list(unsent):
                found = await self._find_row(conn, test, slot)
                if found is not None:
                    slot.seqno = found
                    slot.inserted_at = slot.inserted_at or test.started_at
                    unsent.remove(slot)
                    log.info("spam test row found after a restart", test=str(test.id))
            async with transaction(conn) as cur:
                for slot in unsent:
                    assert slot.table is not None and slot.phone is not None
                    slot.seqno = await handoff.insert_row(
                        cur,
                        slot.table,
                        handoff.AgentRow(
                            slot.phone,
                            test.callback,
                            test.text_for(slot.mtype),
                            slot.mtype.agent_code,
                            test.subject if slot.mtype == MessageType.LMS else None,
                            None,
                            str(test.id),
                            test.company or ("canary" if test.source == "canary" else ""),
                        ),
                    )
        now = datetime.now(UTC)
        for slot in unsent:
            slot.inserted_at = now
        async with self._pg().acquire() as pconn:
            await pconn.executemany(
                """UPDATE spam_filter_test_results SET sms_msgkey = $2,
                       inserted_at = coalesce(inserted_at, $3) WHERE id = $1""",
                [
                    (s.result_id, s.seqno, s.inserted_at)
                    for s in test.slots
                    if s.seqno is not None and s.sendable
                ],
            )

    async def _log_tables(self, conn: aiomysql.Connection, table: str) -> list[str]:
        """The test table's log tables of this month and the last that exist (the node
        clock's months, as the agents name them: docs/clock.md); looked up once per node
        clock day, not on every pass (housekeeping creates them months ahead)."""
        now = self.runtime.clock.now()
        today = now.astimezone(KST).date()
        key = (table, today)
        if key not in self._log_table_cache:
            names = agent_tables.log_tables_between([table], now - LOG_LOOKBACK, now)
            found = await handoff.existing_tables(conn, names)
            self._log_table_cache = {
                k: v for k, v in self._log_table_cache.items() if k[1] == today
            }
            self._log_table_cache[key] = found
        return self._log_table_cache[key]

    async def _find_row(
        self, conn: aiomysql.Connection, test: ActiveTest, slot: Slot
    ) -> int | None:
        assert slot.table is not None
        for name in [slot.table, *await self._log_tables(conn, slot.table)]:
            async with conn.cursor() as cur:
                await cur.execute(
                    f"SELECT seqno FROM `{checked_table(name)}`"
                    " WHERE app_etc1 = %s AND dest_no = %s AND msg_type = %s LIMIT 1",
                    (str(test.id), slot.phone, slot.mtype.agent_code),
                )
                row = await cur.fetchone()
                if row is not None:
                    return int(row[0])
        return None

    # ---- agent results ------------------------------------------------------------------
    async def _poll_agents(self) -> None:
        waiting: dict[str, dict[int, Slot]] = {}
        for test in self.active.values():
            for slot in test.slots:
                if (
                    slot.seqno is not None
                    and slot.agent_code is None
                    and slot.table
                    and slot.result in (None, Verdict.PASS)
                ):
                    waiting.setdefault(slot.table, {})[slot.seqno] = slot
        if not waiting:
            return
        seen: list[Slot] = []
        tests = [str(t) for t in self.active]
        marks = ",".join(["%s"] * len(tests))
        async with self._my().acquire() as conn:
            for table, by_seq in waiting.items():
                ids = ",".join(str(int(n)) for n in by_seq)
                logs = await self._log_tables(conn, table)
                union = " UNION ALL ".join(
                    [
                        f"SELECT seqno, status_code, rsv1 FROM `{checked_table(table)}`"
                        f" WHERE seqno IN ({ids}) AND app_etc1 IN ({marks}) AND rsv1 IN ('4', '5')",
                        *(
                            f"SELECT seqno, status_code, '5' FROM `{checked_table(t)}`"
                            f" WHERE seqno IN ({ids}) AND app_etc1 IN ({marks})"
                            for t in logs
                        ),
                    ]
                )
                async with conn.cursor() as cur:
                    await cur.execute(union, tests * (1 + len(logs)))
                    for seqno, code, _rsv1 in await cur.fetchall():
                        found = by_seq.get(int(seqno))
                        if found is None or int(code) in PENDING_CODES or found.agent_code:
                            continue
                        found.agent_code = int(code)
                        if found.agent_code in SUCCESS_CODES:
                            found.success_seen_at = datetime.now(UTC)
                        seen.append(found)
        if seen:
            async with self._pg().acquire() as conn:
                await conn.executemany(
                    """UPDATE spam_filter_test_results SET status_code = $2,
                           success_seen_at = $3 WHERE id = $1""",
                    [(s.result_id, s.agent_code, s.success_seen_at) for s in seen],
                )

    # ---- receipts -----------------------------------------------------------------------
    async def _attribute_receipts(self) -> None:
        async with self._pg().acquire() as conn:
            receipts = await conn.fetch(
                """SELECT id, modem, carrier, kind, sender, text_hash, subject, mms_size,
                          complete, received_at
                   FROM modem_receipts WHERE node_id = $1 AND match IS NULL
                   ORDER BY id LIMIT $2""",
                self.node_id,
                RECEIPT_BATCH,
            )
            for receipt in receipts:
                await self._attribute(conn, receipt)

    async def _attribute(self, conn: Any, receipt: Row) -> None:
        modem = receipt["modem"]
        holder = self.busy.get(modem)
        candidates = [
            (test, slot)
            for test in self.active.values()
            for slot in test.slots
            if slot.modem == modem and (holder == test.id or slot.result is not None)
        ]
        for test, slot in candidates:
            if not slot.expected.matches(receipt) or slot.received_at is not None:
                continue
            if slot.result is None:
                slot.received_at = receipt["received_at"]
                slot.result, slot.detail = Verdict.PASS.value, None
                delay = self._delay(slot, slot.received_at)
                if delay is not None:
                    self.runtime.metrics.receipt_delay.labels(slot.carrier).observe(delay)
                async with conn.transaction():
                    await conn.execute(
                        """UPDATE spam_filter_test_results SET received = true,
                               received_at = $2, receipt_id = $3, result = 'pass',
                               receipt_delay_s = $4, decided_at = now(), detail = NULL
                           WHERE id = $1""",
                        slot.result_id,
                        slot.received_at,
                        receipt["id"],
                        delay,
                    )
                    await self._mark(conn, receipt["id"], "test", test.id)
                self._free(slot)
                log.info(
                    "spam test receipt",
                    test=str(test.id),
                    carrier=slot.carrier,
                    modem=modem,
                    delay_s=delay,
                )
                return
            await self._late(conn, receipt, slot.result_id, test.id, slot)
            return
        # A decided test no longer in memory: a late receipt?
        rows = await conn.fetch(
            """SELECT r.id, r.test_id, r.carrier, r.result, r.inserted_at, r.success_seen_at,
                      r.message_type, t.callback_number, t.message_subject,
                      t.message_content_lms, r.message_hash
               FROM spam_filter_test_results r JOIN spam_filter_tests t ON t.id = r.test_id
               WHERE t.node_id = $3 AND r.modem = $1 AND NOT r.received AND NOT r.late
                 AND r.result IS NOT NULL AND r.result <> 'pass'
                 AND r.decided_at > now() - $2::interval
               ORDER BY r.decided_at DESC""",
            modem,
            LATE_HORIZON,
            self.node_id,
        )
        for row in rows:
            expected = Expected.of(
                MessageType(row["message_type"]),
                row["callback_number"],
                row["message_hash"],
                row["message_subject"],
                row["message_content_lms"],
            )
            if expected.matches(receipt):
                slot = Slot(
                    row["id"],
                    row["carrier"],
                    MessageType(row["message_type"]),
                    modem,
                    None,
                    None,
                    expected,
                    inserted_at=row["inserted_at"],
                    success_seen_at=row["success_seen_at"],
                    result=row["result"],
                )
                await self._late(conn, receipt, row["id"], row["test_id"], slot)
                return
        await self._mark(conn, receipt["id"], "unmatched", None)
        log.info(
            "receipt matches no test",
            receipt=receipt["id"],
            modem=modem,
            sender=mask_phones(receipt["sender"]),
        )

    @staticmethod
    def _delay(slot: Slot, received_at: datetime) -> float | None:
        if slot.inserted_at is None:
            return None
        return round(max(0.0, (received_at - slot.inserted_at).total_seconds()), 3)

    async def _late(
        self,
        conn: Any,
        receipt: Row,
        result_id: int,
        test_id: uuid.UUID,
        slot: Slot,
    ) -> None:
        delay = self._delay(slot, receipt["received_at"])
        async with conn.transaction():
            await conn.execute(
                """UPDATE spam_filter_test_results SET late = true, late_receipt_id = $2,
                       late_delay_s = $3 WHERE id = $1""",
                result_id,
                receipt["id"],
                delay,
            )
            await self._mark(conn, receipt["id"], "late", test_id)
        if slot.success_seen_at is not None:
            self._sample(
                slot.carrier, (receipt["received_at"] - slot.success_seen_at).total_seconds()
            )
        for shown in self.recent:
            if shown["test_id"] == str(test_id) and slot.carrier in shown["carriers"]:
                shown["carriers"][slot.carrier]["late"] = True
        log.warning(
            "receipt arrived after its verdict",
            test=str(test_id),
            carrier=slot.carrier,
            verdict=slot.result,
            delay_s=delay,
            grace_now_s=self.grace(slot.carrier),
        )

    @staticmethod
    async def _mark(conn: Any, receipt_id: int, how: str, test_id: uuid.UUID | None) -> None:
        await conn.execute(
            "UPDATE modem_receipts SET match = $2, test_id = $3 WHERE id = $1",
            receipt_id,
            how,
            test_id,
        )

    def _free(self, slot: Slot) -> None:
        if slot.modem is not None and self.busy.get(slot.modem) is not None:
            others = [
                s
                for t in self.active.values()
                for s in t.slots
                if s.modem == slot.modem and s.result is None
            ]
            if not others:
                self.busy.pop(slot.modem, None)
                self.freed_at[slot.modem] = datetime.now(UTC)
                self.wake.set()

    # ---- verdicts -----------------------------------------------------------------------
    async def _decide_all(self) -> None:
        now = datetime.now(UTC)
        for test in list(self.active.values()):
            decided: list[tuple[Slot, Decision]] = []
            for slot in test.slots:
                if slot.result is not None or slot.modem is None:
                    continue
                manager = self.modems.get(slot.modem)
                since = slot.inserted_at or test.started_at
                facts = SlotFacts(
                    since,
                    slot.received_at is not None,
                    slot.agent_code,
                    slot.success_seen_at,
                )
                decision = decide(
                    facts,
                    now,
                    self.grace(slot.carrier),
                    self.section.timeout_s,
                    manager is not None and manager.watched_since(since),
                )
                if decision is not None:
                    decided.append((slot, decision))
            if decided:
                async with self._pg().acquire() as conn:
                    await conn.executemany(
                        """UPDATE spam_filter_test_results SET result = $2, detail = $3,
                               decided_at = now() WHERE id = $1 AND result IS NULL""",
                        [(s.result_id, d.verdict.value, d.detail) for s, d in decided],
                    )
                for slot, decision in decided:
                    slot.result, slot.detail = decision.verdict.value, decision.detail
                    self._free(slot)
                    log.info(
                        "spam test verdict",
                        test=str(test.id),
                        carrier=slot.carrier,
                        verdict=slot.result,
                        detail=slot.detail,
                    )
            if all(s.result is not None for s in test.slots):
                await self._complete(test)

    async def _complete(self, test: ActiveTest) -> None:
        verdict = overall(s.result for s in test.slots) or Verdict.DEVICE_ERROR
        for slot in test.slots:
            if slot.result == Verdict.PASS and slot.received_at and slot.success_seen_at:
                self._sample(
                    slot.carrier, (slot.received_at - slot.success_seen_at).total_seconds()
                )
        async with self._pg().acquire() as conn, conn.transaction():
            await conn.execute(
                """UPDATE spam_filter_tests SET status = 'completed', overall = $2,
                       completed_at = now() WHERE id = $1 AND status = 'active'""",
                test.id,
                verdict.value,
            )
            blocked = sum(1 for s in test.slots if s.result == Verdict.BLOCKED)
            if test.run_id is not None and blocked:
                secret = self.runtime.config.dispatch.training_secret.get_secret_value()
                await conn.execute(
                    """INSERT INTO ai_training_logs (source_ref, company_id, spam_test_blocked,
                           metrics_updated_at) VALUES ($1, $2, $3, now())
                       ON CONFLICT (source_ref) DO UPDATE SET
                           spam_test_blocked = ai_training_logs.spam_test_blocked + $3,
                           metrics_updated_at = now()""",
                    source_ref(secret, test.run_id),
                    test.company,
                    blocked,
                )
        self.active.pop(test.id, None)
        for slot in test.slots:
            self.runtime.metrics.spam_verdicts.labels(
                slot.carrier, slot.result or "none", test.source
            ).inc()
        if test.source == "canary":
            self._canary_done(test, verdict)
        self.recent.appendleft(self._view(test, verdict.value))
        log.info(
            "spam test completed",
            test=str(test.id),
            overall=verdict.value,
            verdicts={s.carrier: s.result for s in test.slots},
            elapsed_s=round((datetime.now(UTC) - test.started_at).total_seconds(), 2),
        )

    # ---- canaries -----------------------------------------------------------------------
    def _canary_done(self, test: ActiveTest, verdict: Verdict) -> None:
        label = test.target_modem
        if label is None:
            return
        self.last_canary[label] = {"at": datetime.now(UTC).isoformat(), "verdict": verdict.value}
        if verdict == Verdict.BLOCKED:
            self.runtime.metrics.canary_misses.labels(label).inc()
            if label not in self.flagged:
                log.error(
                    "test phone missed its canary: its verdicts are device_error until it "
                    "passes one again (check its SIM, balance and spam filter)",
                    modem=label,
                )
            self.flagged[label] = datetime.now(UTC)
        elif verdict == Verdict.PASS and self.flagged.pop(label, None) is not None:
            log.info("test phone passed its canary again", modem=label)

    async def _queue_canaries(self) -> None:
        section = self.section
        if section.canary_interval_s <= 0 or not section.canary_callback:
            return
        loop = asyncio.get_running_loop()
        pending = {t.target_modem for t in self.active.values() if t.source == "canary"}
        specs = []
        for config in self.runtime.config.modems:
            label = config.label
            due = self._canary_due.get(label)
            if due is not None and loop.time() < due:
                continue
            if label in pending or label in self._queued_canaries():
                continue
            self._canary_due[label] = loop.time() + section.canary_interval_s
            specs.append(
                SpamTestSpec(
                    node_id=self.node_id,
                    callback=section.canary_callback,
                    sms_text=f"{section.canary_text} {uuid.uuid4().hex[:8]}",
                    source="canary",
                    target_modem=label,
                )
            )
        if specs:
            async with self._pg().acquire() as conn:
                await create_tests(conn, specs)

    def _queued_canaries(self) -> set[str]:
        return {q["target_modem"] for q in self.queue_view if q.get("target_modem") is not None}

    # ---- operator actions ---------------------------------------------------------------
    async def cancel(self, test_id: uuid.UUID) -> dict[str, Any]:
        async with self.lock:
            async with self._pg().acquire() as conn:
                status = await conn.fetchval(
                    """UPDATE spam_filter_tests SET status = 'cancelled', completed_at = now(),
                           status_reason = 'cancelled by operator'
                       WHERE id = $1 AND node_id = $2 AND status IN ('queued', 'active')
                       RETURNING 'cancelled'""",
                    test_id,
                    self.node_id,
                )
                if status is None:
                    current = await conn.fetchval(
                        "SELECT status FROM spam_filter_tests WHERE id = $1", test_id
                    )
                    if current is None:
                        raise KeyError(f"no spam test {test_id}")
                    return {"test_id": str(test_id), "status": current, "stopped": 0}
            test = self.active.pop(test_id, None)
            stopped = 0
            if test is not None:
                tables = sorted({s.table for s in test.slots if s.table})
                async with self._my().acquire() as mconn:
                    stopped = len(await handoff.pull_back(mconn, tables, str(test_id)))
                for slot in test.slots:
                    if slot.modem and self.busy.get(slot.modem) == test_id:
                        self.busy.pop(slot.modem, None)
            log.info("spam test cancelled", test=str(test_id), stopped=stopped)
            self.wake.set()
            sent = sum(1 for s in test.slots if s.seqno is not None) - stopped if test else 0
            return {
                "test_id": str(test_id),
                "status": TestStatus.CANCELLED.value,
                "stopped": stopped,
                "already_sent": max(0, sent),
            }

    # ---- status -------------------------------------------------------------------------
    def _view(self, test: ActiveTest, verdict: str | None) -> dict[str, Any]:
        now = datetime.now(UTC)
        carriers: dict[str, Any] = {}
        for slot in test.slots:
            entry: dict[str, Any] = {
                "verdict": slot.result,
                "modem": slot.modem,
                "status_code": slot.agent_code,
            }
            if slot.result is None:
                if slot.agent_code is None:
                    entry["waiting_for"] = "agent result"
                else:
                    left = self.grace(slot.carrier) - (
                        (now - slot.success_seen_at).total_seconds()
                        if slot.success_seen_at
                        else 0.0
                    )
                    entry["waiting_for"] = f"receipt (blocked in {max(0.0, left):.1f}s)"
            if slot.received_at and slot.inserted_at:
                entry["receipt_delay_s"] = self._delay(slot, slot.received_at)
            if slot.detail:
                entry["detail"] = slot.detail
            carriers[slot.carrier] = entry
        return {
            "test_id": str(test.id),
            "company": test.company,
            "source": test.source,
            "variant": test.variant,
            "batch_id": str(test.batch_id) if test.batch_id else None,
            "status": "active" if verdict is None else "completed",
            "overall": verdict,
            "elapsed_s": round((now - test.started_at).total_seconds(), 1),
            "carriers": carriers,
        }

    def snapshot(self) -> dict[str, Any]:
        phones = []
        for label, manager in self.modems.items():
            phones.append(
                {
                    "modem": label,
                    "carrier": manager.modem.carrier.value,
                    "state": manager.status.state.value,
                    "busy_with": str(self.busy[label]) if label in self.busy else None,
                    "flagged": label in self.flagged,
                    "flagged_since": self.flagged[label].isoformat()
                    if label in self.flagged
                    else None,
                    "last_canary": self.last_canary.get(label),
                }
            )
        return {
            "queue": self.queue_view,
            "active": [self._view(t, None) for t in self.active.values()],
            "recent": list(self.recent),
            "grace_s": {c: self.grace(c) for c in CARRIERS},
            "receipt_samples": {c: len(self.samples.get(c, ())) for c in CARRIERS},
            "phones": phones,
        }
