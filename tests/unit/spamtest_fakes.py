"""In-process fakes of the spam-test engine's seams (`daemon/spamtest/ports.py`).

`FakeSpamBook` keeps the spam-test rows as `dispatch/spamtests/store.py`'s statements
change them (a row decided once keeps its verdict, a test completes only when active, a
cancel ends a queued or active test) and the node's rows of the web's device table as
`dispatch/spamtests/devices.py` registers them, `FakeTestTables` the test agent table as
`dispatch/handoff.py` writes it and the agent moves it, `FakePhone` a modem manager whose
readiness and watch the test sets. Time is the test's: the real-time clock `Wall` (verdict
timing, the store's ``now()``) and the node clock `SetClock` (log-table months).
"""

from __future__ import annotations

import itertools
import tomllib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from config.example import sim_example
from config.loader import validate
from config.model import ModemConfig
from config.names import message_hash, normalise_phone
from daemon.agents import AgentState
from daemon.modems import ModemState, ModemStatus
from daemon.runtime import Runtime
from daemon.spamtest.context import SpamContext
from dispatch.fairness import Row
from dispatch.handoff import AgentRow
from dispatch.spamtests import devices
from dispatch.spamtests.contract import CANARY, SpamTestSpec, TestStatus, Verdict
from dispatch.spamtests.devices import Registration
from dispatch.spamtests.rules import overall
from dispatch.spamtests.store import NewResult
from dispatch.store.training import SpamBlocked
from tests.unit.dispatch_fakes import DAY, NODE, FakeAgents, Monotonic, SetClock

CALLBACK = "0212345678"
TEST_TABLE = "SMSQ_SEND_10"


class Wall:
    """The real-time clock (`SpamContext.now`), moved by the test. Time passing
    (`advance`) moves the monotonic clock too; a clock step (`step`) moves only this one."""

    def __init__(self, moment: datetime, monotonic: Monotonic | None = None) -> None:
        self.moment = moment
        self.monotonic = monotonic

    def __call__(self) -> datetime:
        return self.moment

    def advance(self, seconds: float) -> None:
        self.moment += timedelta(seconds=seconds)
        if self.monotonic is not None:
            self.monotonic.value += seconds

    def step(self, seconds: float) -> None:
        """The system clock is stepped (NTP, an operator): no time passes."""
        self.moment += timedelta(seconds=seconds)


@dataclass
class FakeSpamBook:
    """`ports.SpamBook` in memory."""

    now: Wall
    tests: dict[uuid.UUID, dict[str, Any]] = field(default_factory=dict)
    results: dict[int, dict[str, Any]] = field(default_factory=dict)
    receipts: dict[int, dict[str, Any]] = field(default_factory=dict)
    training: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The web's spam_filter_devices by device_id, and how many registrations reached it.
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)
    registrations: int = 0
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    # SpamBook methods whose next call fails as a PostgreSQL outage would (before the
    # statement's transaction commits: nothing of it is kept).
    fail_next: set[str] = field(default_factory=set)
    # The web's tests the node has not taken yet (`web_queue`).
    untaken: list[dict[str, Any]] = field(default_factory=list)

    def _outage(self, method: str) -> None:
        if method in self.fail_next:
            self.fail_next.discard(method)
            raise ConnectionResetError(f"postgres connection lost during {method}")

    # ---- what the web service and the modems write ----------------------------------------
    def queue(self, sms_text: str = "테스트 메시지", **fields: Any) -> uuid.UUID:
        test_id = uuid.uuid4()
        self.tests[test_id] = {
            "id": test_id,
            "node_id": NODE,
            "company_id": "acme",
            "user_id": None,
            "callback_number": CALLBACK,
            "message_content_sms": sms_text,
            "message_content_lms": None,
            "message_subject": None,
            "message_hash": message_hash(sms_text),
            "source": "manual",
            "variant_id": None,
            "batch_id": None,
            "run_id": None,
            "target_modem": None,
            "status": TestStatus.QUEUED.value,
            "status_reason": None,
            "overall": None,
            "created_at": self.now(),
            "started_at": None,
            "completed_at": None,
            "web": False,
            **fields,
        }
        self.now.advance(0.001)  # clock_timestamp(): each insert its own time
        return test_id

    def web_queue(self, sms_text: str = "테스트 메시지", **fields: Any) -> uuid.UUID:
        """A test the web service created in its own tables, not taken by the node yet
        (`take_web_tests` takes it)."""
        test_id = self.queue(sms_text, web=True, **fields)
        self.untaken.append(self.tests.pop(test_id))
        return test_id

    def receive(
        self, modem: str, text: str, sender: str = CALLBACK, at: datetime | None = None
    ) -> int:
        """A text recorded on a phone (`daemon/receipts.py`), at the wall clock's now (or
        `at`: PostgreSQL's ``now()`` when it was recorded)."""
        receipt_id = next(self._ids)
        self.receipts[receipt_id] = {
            "id": receipt_id,
            "modem": modem,
            "carrier": modem,
            "kind": "sms",
            "sender": normalise_phone(sender),
            "text_hash": message_hash(text),
            "subject": None,
            "mms_size": None,
            "complete": True,
            "received_at": at or self.now(),
            "match": None,
            "test_id": None,
        }
        return receipt_id

    def receive_mms(
        self, modem: str, subject: str | None, size: int | None, sender: str = CALLBACK
    ) -> int:
        """An MMS notification recorded on a phone (an LMS as it arrives), its subject as
        the MMSC sent it (blank or None when it blanked it) and its stated size."""
        receipt_id = self.receive(modem, subject or "", sender)
        self.receipts[receipt_id].update(kind="mms-notification", subject=subject, mms_size=size)
        return receipt_id

    def rows_of(self, test_id: uuid.UUID) -> dict[str, dict[str, Any]]:
        """A test's result rows by carrier (SMS tests: one per carrier)."""
        return {r["carrier"]: r for r in self.results.values() if r["test_id"] == test_id}

    def verdicts(self, test_id: uuid.UUID) -> dict[str, str | None]:
        return {c: r["result"] for c, r in self.rows_of(test_id).items()}

    # ---- SpamBook -----------------------------------------------------------------------
    async def tests_in(self, status: TestStatus, limit: int | None = None) -> list[Row]:
        rows = sorted(
            (t for t in self.tests.values() if t["status"] == status.value),
            key=lambda t: (t["created_at"], str(t["id"])),
        )
        now = self.now()
        return [{**t, "age_s": (now - t["created_at"]).total_seconds()} for t in rows[:limit]]

    async def take_web_tests(self, limit: int, window_s: float) -> tuple[int, list[str]]:
        self._outage("take_web_tests")
        now = self.now()
        within = [t for t in self.untaken if (now - t["created_at"]).total_seconds() < window_s]
        taken = within[:limit]
        self.untaken = [t for t in self.untaken if t not in taken]
        for test in taken:
            self.tests[test["id"]] = test
        return len(taken), []

    async def results_of(self, test_id: uuid.UUID) -> list[Row]:
        return [
            dict(r)
            for r in sorted(self.results.values(), key=lambda r: r["id"])
            if r["test_id"] == test_id
        ]

    async def receipt_delays(self, modems: list[str], count: int) -> list[tuple[str, float]]:
        passed = [
            r
            for r in self.results.values()
            if r["modem"] in modems
            and r["result"] == Verdict.PASS
            and r["success_seen_at"] is not None
            and r["received_at"] is not None
            and not r["late"]
        ]
        out: list[tuple[str, float]] = []
        for carrier in sorted({r["carrier"] for r in passed}):
            latest = sorted(
                (r for r in passed if r["carrier"] == carrier), key=lambda r: r["decided_at"]
            )[-count:]
            out += [
                (carrier, (r["received_at"] - r["success_seen_at"]).total_seconds()) for r in latest
            ]
        for r in self.results.values():
            if r["modem"] in modems and r["late"] and r["success_seen_at"] is not None:
                received = self.receipts[r["late_receipt_id"]]["received_at"]
                out.append((r["carrier"], (received - r["success_seen_at"]).total_seconds()))
        return out

    async def last_canaries(self) -> list[tuple[str, str, datetime]]:
        latest: dict[str, dict[str, Any]] = {}
        for t in self.tests.values():
            if t["source"] == CANARY and t["status"] == TestStatus.COMPLETED.value:
                have = latest.get(t["target_modem"])
                if have is None or have["completed_at"] < t["completed_at"]:
                    latest[t["target_modem"]] = t
        return [(m, t["overall"], t["completed_at"]) for m, t in sorted(latest.items())]

    async def last_served(self) -> dict[str | None, datetime]:
        served: dict[str | None, datetime] = {}
        for t in self.tests.values():
            if t["started_at"] is not None:
                company = t["company_id"]
                served[company] = max(served.get(company, t["started_at"]), t["started_at"])
        return served

    async def create_tests(self, specs: Sequence[SpamTestSpec]) -> None:
        for spec in specs:
            spec.check()
            self.queue(
                spec.sms_text or "",
                company_id=spec.company_id,
                callback_number=spec.callback,
                source=spec.source,
                target_modem=spec.target_modem,
                run_id=spec.run_id,
            )

    async def start_test(
        self, test_id: uuid.UUID, results: Sequence[NewResult]
    ) -> tuple[datetime, list[int]] | None:
        test = self.tests[test_id]
        if test["status"] != TestStatus.QUEUED.value:
            return None
        test["status"], test["started_at"] = TestStatus.ACTIVE.value, self.now()
        ids = []
        for r in results:
            result_id = next(self._ids)
            self.results[result_id] = {
                "id": result_id,
                "test_id": test_id,
                "carrier": r.carrier,
                "message_type": r.mtype.value,
                "phone": r.phone,
                "modem": r.modem,
                "sms_table": r.table,
                "message_hash": r.text_hash,
                "sms_msgkey": None,
                "inserted_at": None,
                "status_code": None,
                "success_seen_at": None,
                "received": False,
                "received_at": None,
                "receipt_id": None,
                "receipt_delay_s": None,
                "result": r.result.value if r.result else None,
                "detail": r.detail,
                "decided_at": self.now() if r.result else None,
                "late": False,
                "late_receipt_id": None,
                "late_delay_s": None,
                "late_from": None,
            }
            ids.append(result_id)
        return test["started_at"], ids

    async def record_sent(self, rows: Sequence[tuple[int, int, datetime | None]]) -> None:
        self._outage("record_sent")
        for result_id, seqno, inserted_at in rows:
            row = self.results[result_id]
            row["sms_msgkey"] = seqno
            row["inserted_at"] = row["inserted_at"] or inserted_at

    async def record_agent_codes(self, rows: Sequence[tuple[int, int, datetime | None]]) -> None:
        self._outage("record_agent_codes")
        for result_id, code, seen in rows:
            self.results[result_id].update(status_code=code, success_seen_at=seen)

    async def record_verdicts(self, rows: Sequence[tuple[int, Verdict, str | None]]) -> None:
        self._outage("record_verdicts")
        for result_id, verdict, detail in rows:
            row = self.results[result_id]
            if row["result"] is None:
                row.update(result=verdict.value, detail=detail, decided_at=self.now())

    async def complete_test(
        self, test_id: uuid.UUID, verdict: Verdict, blocked: SpamBlocked | None
    ) -> None:
        self._outage("complete_test")
        test = self.tests[test_id]
        if test["status"] == TestStatus.ACTIVE.value:
            test.update(status="completed", overall=verdict.value, completed_at=self.now())
        if blocked is not None:  # the latest test's count replaces an earlier one's
            self.training[blocked.ref] = {"spam_blocked": blocked.blocked}

    async def cancel_test(self, test_id: uuid.UUID) -> tuple[bool, str] | None:
        test = self.tests.get(test_id)
        if test is None:
            return None
        if test["status"] in (TestStatus.QUEUED.value, TestStatus.ACTIVE.value):
            test.update(status="cancelled", completed_at=self.now())
            return True, "cancelled"
        return False, str(test["status"])

    async def unmatched_receipts(self, limit: int) -> list[Row]:
        return [dict(r) for _, r in sorted(self.receipts.items()) if r["match"] is None][:limit]

    async def record_receipt(
        self,
        result_id: int,
        test_id: uuid.UUID,
        receipt_id: int,
        received_at: datetime,
        delay_s: float | None,
    ) -> None:
        self._outage("record_receipt")
        self.results[result_id].update(
            received=True,
            received_at=received_at,
            receipt_id=receipt_id,
            result="pass",
            receipt_delay_s=delay_s,
            decided_at=self.now(),
            detail=None,
        )
        await self.mark_receipt(receipt_id, "test", test_id)

    async def record_late(
        self,
        result_id: int,
        test_id: uuid.UUID,
        receipt_id: int,
        received_at: datetime,
        delay_s: float | None,
    ) -> Verdict | None:
        self._outage("record_late")
        row = self.results[result_id]
        row.update(
            late=True,
            late_receipt_id=receipt_id,
            late_delay_s=delay_s,
            late_from=row.get("late_from") or row["result"],
            result="pass",
            received=True,
            received_at=received_at,
        )
        await self.mark_receipt(receipt_id, "late", test_id)
        test = self.tests[test_id]
        if test["status"] != TestStatus.COMPLETED.value:
            return None
        verdict = overall(r["result"] for r in self.results.values() if r["test_id"] == test_id)
        test["overall"] = (verdict or Verdict.DEVICE_ERROR).value
        return verdict or Verdict.DEVICE_ERROR

    async def mark_receipt(self, receipt_id: int, how: str, test_id: uuid.UUID | None) -> None:
        self._outage("mark_receipt")
        self.receipts[receipt_id].update(match=how, test_id=test_id)

    async def decided_unreceived(
        self, modem: str, horizon: timedelta, received_at: datetime
    ) -> list[Row]:
        out = []
        for r in self.results.values():
            test = self.tests[r["test_id"]]
            if (
                test["status"] != TestStatus.ACTIVE.value
                and test["started_at"] is not None
                and test["started_at"] <= received_at
                and r["modem"] == modem
                and not r["received"]
                and not r["late"]
                and r["result"] not in (None, "pass")
                and r["decided_at"] > self.now() - horizon
            ):
                t = self.tests[r["test_id"]]
                out.append(
                    {
                        **r,
                        "callback_number": t["callback_number"],
                        "message_subject": t["message_subject"],
                        "message_content_lms": t["message_content_lms"],
                    }
                )
        return sorted(out, key=lambda r: r["decided_at"], reverse=True)

    async def register_devices(self, phones: Sequence[ModemConfig]) -> Registration:
        self._outage("register_devices")
        self.registrations += 1
        configured = {devices.device_id(NODE, m.phone): m for m in phones}
        for ident, m in configured.items():
            self.devices[ident] = {
                "device_id": ident,
                "carrier": m.carrier.value,
                "phone": m.phone,
                "device_name": devices.device_name(NODE, m),
                "is_active": True,
                "last_seen_at": self.now(),
            }
        retired = [
            row
            for ident, row in self.devices.items()
            if ident.startswith(devices.node_prefix(NODE))
            and ident not in configured
            and row["is_active"]
        ]
        for row in retired:
            row["is_active"] = False
        return Registration(len(configured), len(retired))


@dataclass
class FakeTestTables:
    """`ports.TestTables`: the test agent table and its log tables, as rows."""

    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    log_tables: set[str] = field(default_factory=set)
    down: bool = False
    inserted: int = 0
    _seq: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def of(self, test_id: uuid.UUID) -> list[dict[str, Any]]:
        return [r for rows in self.rows.values() for r in rows if r["app_etc1"] == str(test_id)]

    def report(self, test_id: uuid.UUID, phone: str, code: int) -> None:
        """The agent reports a final code for the test's row to `phone` (rsv1 4)."""
        for row in self.of(test_id):
            if row["dest_no"] == phone:
                row.update(rsv1="4", status_code=code)

    def _check(self) -> None:
        if self.down:
            raise ConnectionRefusedError("mysql down")

    async def existing(self, tables: Sequence[str]) -> list[str]:
        self._check()
        return [t for t in tables if t in self.log_tables or t in self.rows]

    async def find_row(
        self, tables: Sequence[str], test_ref: str, phone: str, msg_type: str
    ) -> int | None:
        self._check()
        for table in tables:
            for row in self.rows.get(table, []):
                if (row["app_etc1"], row["dest_no"], row["msg_type"]) == (
                    test_ref,
                    phone,
                    msg_type,
                ):
                    return int(row["seqno"])
        return None

    async def insert(self, rows: Sequence[tuple[str, AgentRow]]) -> list[int]:
        self._check()
        seqnos = []
        for table, row in rows:
            seqno = next(self._seq)
            self.rows.setdefault(table, []).append(
                {
                    "seqno": seqno,
                    "dest_no": row.dest_no,
                    "msg_type": row.msg_type,
                    "app_etc1": row.app_etc1,
                    "rsv1": "1",
                    "status_code": 100,
                }
            )
            seqnos.append(seqno)
        self.inserted += len(rows)
        return seqnos

    async def final_codes(
        self, table: str, logs: Sequence[str], seqnos: Sequence[int], test_refs: Sequence[str]
    ) -> list[tuple[int, int]]:
        self._check()
        out = []
        for name in (table, *logs):
            for row in self.rows.get(name, []):
                if (
                    row["seqno"] in seqnos
                    and row["app_etc1"] in test_refs
                    and (name != table or row["rsv1"] in ("4", "5"))
                    and row["status_code"] not in (100, 104)
                ):
                    out.append((row["seqno"], row["status_code"]))
        return out

    async def pull_back(self, tables: Sequence[str], test_ref: str) -> list[str]:
        self._check()
        numbers = []
        for table in tables:
            keep = []
            for row in self.rows.get(table, []):
                if row["app_etc1"] == test_ref and row["rsv1"] == "1":
                    numbers.append(row["dest_no"])
                else:
                    keep.append(row)
            self.rows[table] = keep
        return numbers


@dataclass
class FakePhone:
    """`ports.PhoneWatch`: a modem manager whose state and watch the test sets.

    By default its storage is read completely at every moment (`storage_read_at` is the
    monotonic now). With `reads_continuously` off, a read happens only when the engine
    asks for one (`request_read`), and only when `reads_work`."""

    modem: ModemConfig
    status: ModemStatus = field(default_factory=ModemStatus)
    settled: bool = True
    watched: bool = True
    watched_from: list[Any] = field(default_factory=list)
    clock: Monotonic | None = None
    reads_continuously: bool = True
    reads_work: bool = True
    read_requests: int = 0
    last_read_at: float | None = None

    @property
    def storage_read_at(self) -> float | None:
        if self.reads_continuously and self.clock is not None:
            return self.clock()
        return self.last_read_at

    def request_read(self) -> None:
        self.read_requests += 1
        if self.reads_work and self.clock is not None:
            self.last_read_at = self.clock()

    def __post_init__(self) -> None:
        self.status.state, self.status.reason = ModemState.READY, ""

    @property
    def ready(self) -> bool:
        return self.status.state == ModemState.READY

    def unplug(self) -> None:
        self.status.state, self.status.reason = ModemState.ABSENT, "unplugged"
        self.watched = False

    def watched_since(self, start: datetime) -> bool:
        self.watched_from.append(start)
        return self.watched and self.ready


@dataclass
class SpamFakes:
    ctx: SpamContext
    book: FakeSpamBook
    tables: FakeTestTables
    phones: dict[str, FakePhone]
    agents: FakeAgents
    wall: Wall
    clock: SetClock
    monotonic: Monotonic


def spam_engine(
    tmp_path: Path, extra_phones: Sequence[tuple[str, str, str]] = (), **settings: Any
) -> SpamFakes:
    """A spam-test context on fakes for the simulated example: phones SKT, KT and LGU
    (and `extra_phones`: (name, carrier, number)), the test group's agent 10; `settings`
    override `[spam_tests]`."""
    raw = tomllib.loads(sim_example(tmp_path))
    raw["node"]["id"] = NODE
    for name, carrier, number in extra_phones:
        template = next(m for m in raw["modems"] if m["carrier"] == carrier)
        raw["modems"].append(
            {**template, "name": name, "phone": number, "device": f"{tmp_path}/dev/{name}"}
        )
    raw["spam_tests"] = {**raw.get("spam_tests", {}), **settings}
    config = validate(raw)
    monotonic = Monotonic()
    wall, clock = Wall(DAY, monotonic), SetClock(DAY)
    book, tables, agents = FakeSpamBook(wall), FakeTestTables(), FakeAgents()
    for number in range(1, 12):
        agents.set(number, AgentState.OK)
    phones = {m.label: FakePhone(m, clock=monotonic) for m in config.modems}
    ctx = SpamContext(
        Runtime(config=config, clock=clock),
        book=book,
        tables=tables,
        phones=dict(phones),
        agents=agents,
        now=wall,
        monotonic=monotonic,
    )
    ctx.started = monotonic()
    return SpamFakes(ctx, book, tables, phones, agents, wall, clock, monotonic)


def restarted(f: SpamFakes) -> SpamContext:
    """A new engine's memory on the same databases and phones (the daemon restarted)."""
    ctx = SpamContext(
        f.ctx.runtime,
        book=f.book,
        tables=f.tables,
        phones=dict(f.phones),
        agents=f.agents,
        now=f.wall,
        monotonic=f.monotonic,
    )
    ctx.started = f.monotonic()
    return ctx
