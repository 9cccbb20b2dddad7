"""In-process fakes of the dispatcher's seams (`daemon/dispatcher/ports.py`).

`FakeBook` keeps runs and recipients the way the store's statements change them
(`dispatch/store/`); `FakeAgentTables` keeps agent-table rows the way `dispatch/handoff.py`
and the agents change them (rsv1 1 waiting → 2 picked up → 4 result; log tables by
name). Each fake follows the real statement it stands for, so a decision tested on them
is the decision the daemon makes on the real databases; they share no code with the
store. `dispatcher(...)` builds a context on them with the node clock and the monotonic
clock under the test's control.
"""

from __future__ import annotations

import asyncio
import tomllib
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from config.clock import NodeClock
from config.example import sim_example
from config.loader import validate
from daemon.agents import AgentState, AgentStatus
from daemon.dispatcher.context import Context
from daemon.runtime import Runtime
from dispatch.agent_tables import Backlog
from dispatch.guards import CheckedPage
from dispatch.handoff import BILL_ID, RowValues, RunRowKey, StagedRows
from dispatch.ledger import PullEntry
from dispatch.outcomes import Result, Tally
from dispatch.store.runs import Run, RunStatus
from dispatch.store.training import RunMetrics
from dispatch.store.web import WebGroup

NODE = "node-under-test"
DAY = datetime(2026, 11, 17, 3, 0, tzinfo=UTC)  # 12:00 KST: inside the advertising window


class SetClock(NodeClock):
    """The node clock, moved by the test."""

    def __init__(self, moment: datetime) -> None:
        super().__init__(None)
        self.moment = moment

    def now(self) -> datetime:
        return self.moment


class Monotonic:
    """time.monotonic, moved by the test."""

    def __init__(self) -> None:
        self.value = 1000.0

    def __call__(self) -> float:
        return self.value


def make_run(company: str = "acme", **fields: Any) -> Run:
    """A queued run of this node with every counter at zero; `fields` override."""
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "node_id": NODE,
        "company_id": company,
        "user_id": None,
        "status": RunStatus.QUEUED,
        "status_reason": None,
        "line_group": None,
        "message_type": "SMS",
        "callback_number": "0212345678",
        "is_ad": False,
        "scheduled_at": None,
        "queued_at": DAY - timedelta(hours=1),
        "group_since": None,
        "started_at": None,
        "target_count": 0,
        "inserted_count": 0,
        "sent_count": 0,
        "success_count": 0,
        "fail_count": 0,
        "spam_count": 0,
        "systemic_count": 0,
        "prepared": True,
        "prepared_upto": 0,
        "next_seq": 0,
        "verify_until": 0,
        "breaker_checked": False,
    }
    values.update(fields)
    return Run(**values)


def phone(i: int) -> str:
    return f"0109{i:07d}"


@dataclass
class Recipient:
    seq: int
    phone: str
    text: str
    subject: str | None = None
    attachments: list[str] | None = None
    phone_norm: str | None = None
    state: str = "pending"
    is_pulled: bool = False
    status_code: int | None = None

    @property
    def number(self) -> str:
        return self.phone_norm or self.phone

    def page_row(self, pulled: bool) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "number": self.number,
            "message_text": self.text,
            "subject": self.subject,
            "attachments": self.attachments,
            "pulled": pulled,
        }


@dataclass
class FakeBook:
    """`ports.RunBook` in memory."""

    clock: SetClock
    runs: dict[uuid.UUID, Run] = field(default_factory=dict)
    recipients: dict[uuid.UUID, list[Recipient]] = field(default_factory=dict)
    # The web's assignments: ('user'|'company', id) -> sms_line_groups row (name, tables).
    assigned: dict[tuple[str, str], WebGroup] = field(default_factory=dict)
    unsubscribed: set[tuple[str | None, str]] = field(default_factory=set)
    # Runs whose campaign the web service cancelled (campaigns.status = 'cancelled').
    web_cancelled: set[uuid.UUID] = field(default_factory=set)
    # (company, callback) the web registered; None: every callback is registered.
    registered_callbacks: set[tuple[str, str]] | None = None
    skipped: dict[uuid.UUID, Counter[str]] = field(default_factory=dict)
    metrics: dict[str, RunMetrics] = field(default_factory=dict)
    # When each run last changed (hanjullo.runs.updated_at), by the node clock.
    updated: dict[uuid.UUID, datetime] = field(default_factory=dict)
    # Set to make the next call of that name raise (a statement that fails).
    fail: dict[str, BaseException] = field(default_factory=dict)

    def add(self, run: Run, count: int = 0, text: str = "안내 문자") -> Run:
        """Store `run` with `count` recipients (seq 1…count) and their target count."""
        self.recipients[run.id] = [Recipient(i, phone(i), text) for i in range(1, count + 1)]
        self.runs[run.id] = replace(run, target_count=count)
        return self.runs[run.id]

    def _change(self, run_id: uuid.UUID, touch: bool = True, **fields: Any) -> Run:
        """Change a run's fields; `touch`: as a statement that sets ``updated_at``."""
        self.runs[run_id] = replace(self.runs[run_id], **fields)
        if touch:
            self.updated[run_id] = self.clock.now()
        return self.runs[run_id]

    def _maybe_fail(self, name: str) -> None:
        if name in self.fail:
            raise self.fail.pop(name)

    # runs and grants
    async def runs_in(self, statuses: tuple[RunStatus, ...]) -> list[Run]:
        self._maybe_fail("runs_in")
        return [r for r in self.runs.values() if r.node_id == NODE and r.status in statuses]

    async def run(self, run_id: uuid.UUID) -> Run | None:
        self._maybe_fail("run")
        return self.runs.get(run_id)

    async def status_of(self, run_id: uuid.UUID) -> RunStatus | None:
        run = self.runs.get(run_id)
        if run is not None and run_id in self.web_cancelled:
            return RunStatus.CANCELLED
        return None if run is None else run.status

    async def callback_problem(self, company_id: str, callback: str) -> str | None:
        if self.registered_callbacks is None or (company_id, callback) in self.registered_callbacks:
            return None
        return f"callback {callback} is registered for the company in neither ..."

    async def cancelled_by_web(self, statuses: tuple[RunStatus, ...]) -> list[uuid.UUID]:
        return [i for i in self.web_cancelled if i in self.runs and self.runs[i].status in statuses]

    async def set_status(self, run_id: uuid.UUID, status: RunStatus, reason: str | None) -> None:
        self._change(run_id, status=status, status_reason=reason)

    async def take_group(self, run_id: uuid.UUID, group: str, now: datetime) -> bool:
        run = self.runs[run_id]
        if run.status != RunStatus.QUEUED or run_id in self.web_cancelled:
            return False
        self._change(
            run_id,
            status=RunStatus.SENDING,
            line_group=group,
            group_since=now,
            started_at=run.started_at or now,
            status_reason=None,
        )
        return True

    async def last_served(self, companies: list[str]) -> dict[str, datetime]:
        served: dict[str, datetime] = {}
        for r in self.runs.values():
            if r.company_id in companies and r.group_since is not None:
                served[r.company_id] = max(served.get(r.company_id, r.group_since), r.group_since)
        return served

    async def assignments(self) -> dict[tuple[str, str], WebGroup]:
        return dict(self.assigned)

    # the guard pass, pages and checkpoints, pull-back
    async def checked_numbers(self, run_id: uuid.UUID, upto: int) -> set[str]:
        return {r.number for r in self.recipients[run_id] if r.seq <= upto and r.state != "skipped"}

    async def recipients_after(
        self, run_id: uuid.UUID, after: int, limit: int
    ) -> list[dict[str, Any]]:
        page = [r for r in self.recipients[run_id] if r.seq > after][:limit]
        return [
            {
                "seq": r.seq,
                "phone": r.phone,
                "message_text": r.text,
                "subject": r.subject,
                "attachments": r.attachments,
            }
            for r in page
        ]

    async def opted_out(self, user_id: str | None, numbers: list[str]) -> set[str]:
        return {n for n in numbers if (user_id, n) in self.unsubscribed}

    async def record_checked(self, run_id: uuid.UUID, page: CheckedPage) -> None:
        by_seq = {r.seq: r for r in self.recipients[run_id]}
        for seq, norm, reason in zip(page.seqs, page.norms, page.reasons, strict=True):
            by_seq[seq].phone_norm = norm
            if reason is not None:
                by_seq[seq].state = "skipped"
        self.skipped.setdefault(run_id, Counter()).update(page.counts)
        self._change(run_id, touch=False, prepared_upto=page.last_seq)

    async def finish_checking(self, run_id: uuid.UUID) -> dict[str, int]:
        self._change(run_id, touch=False, prepared=True)
        return dict(self.skipped.get(run_id, {}))

    async def pulled_page(self, run_id: uuid.UUID, limit: int) -> list[dict[str, Any]]:
        pulled = [r for r in self.recipients[run_id] if r.is_pulled][:limit]
        return [r.page_row(True) for r in pulled]

    async def checkpoint(self, run_id: uuid.UUID) -> int:
        return self.runs[run_id].next_seq

    async def pending_page(
        self, run_id: uuid.UUID, after: int, limit: int, checked_upto: int | None
    ) -> list[dict[str, Any]]:
        page = [
            r
            for r in self.recipients[run_id]
            if r.state == "pending"
            and r.seq > after
            and (checked_upto is None or r.seq <= checked_upto)
        ][:limit]
        return [r.page_row(False) for r in page]

    async def record_verify_until(self, run_id: uuid.UUID, seq: int) -> None:
        self._change(run_id, touch=False, verify_until=max(self.runs[run_id].verify_until, seq))

    async def record_batch(
        self,
        run_id: uuid.UUID,
        size: int,
        last_seq: int,
        pulled_seqs: Sequence[int] | None,
        verify_until: int = 0,
    ) -> None:
        self._maybe_fail("record_batch")
        # As the store: counted only as far as it clears a mark or moves the checkpoint;
        # verify_until raised either way, in the same statement.
        run = self.runs[run_id]
        if verify_until > run.verify_until:
            run = self._change(run_id, touch=False, verify_until=verify_until)
        if pulled_seqs is not None:
            cleared = 0
            for r in self.recipients[run_id]:
                if r.seq in pulled_seqs and r.is_pulled:
                    r.state, r.is_pulled = "pending", False
                    cleared += 1
            self._change(run_id, inserted_count=run.inserted_count + cleared)
        elif run.next_seq < last_seq:
            self._change(run_id, next_seq=last_seq, inserted_count=run.inserted_count + size)

    def _mark(self, run_id: uuid.UUID, numbers: list[str]) -> int:
        stopped = 0
        for r in self.recipients[run_id]:
            if r.state == "pending" and r.number in numbers:
                r.state, r.is_pulled = "pulled", True
                stopped += 1
        return stopped

    async def mark_pulled(self, run_id: uuid.UUID, numbers: list[str]) -> int:
        self._maybe_fail("mark_pulled")
        stopped = self._mark(run_id, numbers)
        self._change(run_id, inserted_count=self.runs[run_id].inserted_count - stopped)
        return stopped

    async def record_pull_back(
        self, run_id: uuid.UUID, numbers: list[str], status: RunStatus, reason: str | None
    ) -> tuple[int, int]:
        self._maybe_fail("record_pull_back")
        stopped = self._mark(run_id, numbers)
        run = self._change(
            run_id,
            inserted_count=self.runs[run_id].inserted_count - stopped,
            status=status,
            status_reason=reason,
        )
        return stopped, run.inserted_count

    # results and training metrics
    async def runs_awaiting_results(self, horizon_h: float) -> list[Run]:
        may = {"sending", "draining", "results", "paused", "cancelled", "held"}
        quiet_since = self.clock.now() - timedelta(hours=horizon_h)

        def recent(r: Run) -> bool:
            stopped = r.status in ("paused", "cancelled", "held")
            return not stopped or self.updated.get(r.id, self.clock.now()) >= quiet_since

        return [
            r
            for r in self.runs.values()
            if (r.line_group and r.status in may and r.inserted_count > r.results and recent(r))
            or r.status == RunStatus.RESULTS
        ]

    async def settled_runs(self, run_ids: Sequence[uuid.UUID], horizon_h: float) -> set[uuid.UUID]:
        quiet_since = self.clock.now() - timedelta(hours=horizon_h)
        final = ("completed", "cancelled", "rejected")
        return {
            i
            for i in run_ids
            if i not in self.runs
            or (
                self.runs[i].status in final and self.updated.get(i, self.clock.now()) < quiet_since
            )
        }

    async def apply_results(self, run_id: uuid.UUID, results: Sequence[Result]) -> list[int]:
        codes = []
        by_number = {r.dest_no: r for r in results}
        for recipient in self.recipients[run_id]:
            result = by_number.get(recipient.number)
            if result is not None and recipient.state == "pending":
                recipient.state, recipient.status_code = "final", result.status_code
                codes.append(result.status_code)
        tally = Tally.of(codes)
        run = self.runs[run_id]
        if not codes:
            return codes
        self._change(
            run_id,
            success_count=run.success_count + tally.success,
            fail_count=run.fail_count + tally.fail,
            spam_count=run.spam_count + tally.spam,
            systemic_count=run.systemic_count + tally.systemic,
        )
        return codes

    async def record_in_flight(self, run_id: uuid.UUID, in_flight: int) -> Run:
        run = self.runs[run_id]
        return self._change(run_id, touch=False, sent_count=run.results + in_flight)

    async def mark_breaker_checked(self, run_id: uuid.UUID) -> None:
        self._change(run_id, touch=False, breaker_checked=True)

    async def commonest_codes(
        self, run_id: uuid.UUID, codes: Sequence[int]
    ) -> list[tuple[int, int]]:
        found = Counter(r.status_code for r in self.recipients[run_id] if r.status_code in codes)
        return [(int(code), n) for code, n in found.most_common(3) if code is not None]

    async def record_metrics(self, refs: list[str], metrics: RunMetrics, run_id: uuid.UUID) -> None:
        for ref in refs:  # the web logged a row under one of them (AI: run, direct: campaign)
            self.metrics[ref] = metrics


@dataclass
class AgentRow:
    seqno: int
    dest_no: str
    run_ref: str  # bill_id: the run id
    rsv1: str = "1"
    status_code: int = 100
    result_at: datetime | None = None
    mob_company: str | None = None
    app_etc1: str | None = None  # the campaign id; None: the run id (a run without one)

    def of(self, key: RunRowKey) -> bool:
        """Whether the row is the run's (`handoff.MATCH_RUN`: app_etc1 and bill_id)."""
        return self.run_ref == key.bill_id and (self.app_etc1 or self.run_ref) == key.app_etc1


@dataclass
class LedgerEntry:
    """One entry of `hanjullo_ledger` as `dispatch/ledger.py` appends it."""

    id: int
    kind: str  # insert | pull | pulled | move
    run_ref: str
    table: str
    numbers: list[str]
    seqs: tuple[int, int] = (0, 2**31 - 1)
    ref: int | None = None


@dataclass
class FakeAgentTables:
    """`ports.AgentTables` in memory: tables by name, live and log alike, and the commit
    ledger written with every write of agent rows (in the same step, as one transaction)."""

    tables: dict[str, list[AgentRow]] = field(default_factory=dict)
    ledger: list[LedgerEntry] = field(default_factory=list)
    # Set to make the next write into that table raise (e.g. the connection dropped).
    fail_write: dict[str, BaseException] = field(default_factory=dict)
    # Set to make the next write into that table slow: it lets the event loop run this
    # many times before it commits (a sibling's failure and a retry can happen meanwhile).
    slow_write: dict[str, int] = field(default_factory=dict)
    # Set to make the next pull-back fail (its one transaction: nothing is deleted).
    fail_pull: BaseException | None = None
    # Set to make the next pull-back take this many turns of the event loop between
    # locking its rows and committing; `pulling` is set once it has locked them.
    slow_pull: int = 0
    pulling: asyncio.Event = field(default_factory=asyncio.Event)
    lookups: int = 0
    _seqno: int = 0

    def __post_init__(self) -> None:
        for n in range(1, 12):
            self.tables.setdefault(f"SMSQ_SEND_{n}", [])

    def rows(self, run_ref: str) -> list[tuple[str, str]]:
        """(table, number) of every row of the run, in any table."""
        return [
            (t, r.dest_no) for t, rows in self.tables.items() for r in rows if r.run_ref == run_ref
        ]

    def _entry(
        self,
        kind: str,
        run_ref: str,
        table: str,
        numbers: list[str],
        seqs: tuple[int, int] = (0, 2**31 - 1),
        ref: int | None = None,
    ) -> LedgerEntry:
        entry = LedgerEntry(len(self.ledger) + 1, kind, run_ref, table, numbers, seqs, ref)
        self.ledger.append(entry)
        return entry

    def insert(
        self,
        table: str,
        numbers: Sequence[str],
        run_ref: str,
        rsv1: str = "1",
        ledger: bool = True,
        seqs: tuple[int, int] = (0, 2**31 - 1),
        app_etc1: str | None = None,
    ) -> None:
        """Rows of the run in `table`, as a daemon of this node commits them (with their
        ledger entry) or, with ``ledger=False``, as someone else writes them; `app_etc1`
        the run's campaign (None: a run without one, app_etc1 = its id)."""
        for number in numbers:
            self._seqno += 1
            self.tables.setdefault(table, []).append(
                AgentRow(self._seqno, number, run_ref, rsv1, app_etc1=app_etc1)
            )
        if ledger and numbers:
            self._entry("insert", run_ref, table, list(numbers), seqs)

    def delete(self, table: str, numbers: Sequence[str]) -> None:
        """Someone else (the web service's cancel or delete-one-recipient) deletes rows."""
        self.tables[table] = [r for r in self.tables[table] if r.dest_no not in numbers]

    def agent_reports(self, table: str, code: int, at: datetime, limit: int | None = None) -> int:
        """The agent picks up its waiting rows and reports `code` for each (rsv1 4)."""
        done = 0
        for row in self.tables[table]:
            if row.rsv1 == "1" and (limit is None or done < limit):
                row.rsv1, row.status_code, row.result_at = "4", code, at
                done += 1
        return done

    async def waiting_counts(self, tables: Sequence[str]) -> dict[str, int]:
        return {t: sum(1 for r in self.tables.get(t, []) if r.rsv1 == "1") for t in tables}

    async def run_waiting(self, tables: Sequence[str], key: RunRowKey) -> int:
        return sum(1 for t in tables for r in self.tables.get(t, []) if r.of(key) and r.rsv1 == "1")

    async def committed(
        self,
        tables: Sequence[str],
        key: RunRowKey,
        numbers: Sequence[str],
        seqs: tuple[int, int],
    ) -> set[str]:
        self.lookups += 1
        wanted = set(numbers)
        entries = [e for e in self.ledger if e.run_ref == key.run_ref]
        if not entries:  # a run from before the ledger: its tables are searched
            return {
                r.dest_no
                for t in tables
                for r in self.tables.get(t, [])
                if r.of(key) and r.dest_no in wanted
            }
        present: set[str] = set()
        for e in entries:
            if e.kind == "insert" and e.seqs[1] >= seqs[0] and e.seqs[0] <= seqs[1]:
                present |= wanted.intersection(e.numbers)
            elif e.kind == "pull":
                present -= set(e.numbers)
        return present

    async def existing(self, tables: Sequence[str]) -> list[str]:
        return [t for t in tables if t in self.tables]

    def stage(self, rows: list[RowValues]) -> StagedRows:
        return StagedRows(rows)

    async def write(self, table: str, staged: StagedRows, seqs: tuple[int, int]) -> None:
        for _ in range(self.slow_write.pop(table, 0)):
            await asyncio.sleep(0)  # a turn of the event loop, not a wait for time
        if table in self.fail_write:
            raise self.fail_write.pop(table)
        first = staged.rows[0]
        run_ref = first[BILL_ID]
        assert run_ref is not None
        app_etc1 = first[8] if first[8] != run_ref else None
        self.insert(table, [row[0] for row in staged.rows], run_ref, seqs=seqs, app_etc1=app_etc1)

    async def pull_back(self, tables: Sequence[str], key: RunRowKey) -> list[PullEntry]:
        # SELECT … FOR UPDATE: the rows are found (and locked) first, then deleted by seqno.
        run_ref = key.run_ref
        found = {
            t: [r for r in self.tables.get(t, []) if r.of(key) and r.rsv1 == "1"] for t in tables
        }
        self.pulling.set()
        for _ in range(self.slow_pull):
            await asyncio.sleep(0)  # a turn of the event loop, not a wait for time
        self.slow_pull = 0
        # One transaction: every table's deletes and entries, or (failing) none of them.
        if self.fail_pull is not None:
            exc, self.fail_pull = self.fail_pull, None
            raise exc
        entries = []
        for t, rows in found.items():
            if not rows:
                continue
            gone = {r.seqno for r in rows}
            self.tables[t] = [r for r in self.tables[t] if r.seqno not in gone]
            numbers = [r.dest_no for r in rows]
            logged = self._entry("pull", run_ref, t, numbers)
            entries.append(PullEntry(logged.id, run_ref, t, numbers))
        return entries

    async def open_pulls(self) -> list[PullEntry]:
        closed = {e.ref for e in self.ledger if e.kind == "pulled"}
        return [
            PullEntry(e.id, e.run_ref, e.table, e.numbers)
            for e in self.ledger
            if e.kind == "pull" and e.id not in closed
        ]

    async def close_pulls(self, entries: Sequence[PullEntry]) -> None:
        for entry in entries:
            self._entry("pulled", entry.run_ref, entry.table, [], ref=entry.id)

    async def ledger_runs(self) -> list[str]:
        return sorted({e.run_ref for e in self.ledger})

    async def prune_ledger(self, run_refs: Sequence[str]) -> int:
        before = len(self.ledger)
        self.ledger = [e for e in self.ledger if e.run_ref not in run_refs]
        return before - len(self.ledger)

    async def tables_written(self, run_ref: str) -> list[str]:
        return sorted(
            {e.table for e in self.ledger if e.run_ref == run_ref and e.kind in ("insert", "move")}
        )

    async def move_waiting(self, source: str, targets: Sequence[str]) -> int:
        waiting = [r for r in self.tables[source] if r.rsv1 == "1"]
        self.tables[source] = [r for r in self.tables[source] if r.rsv1 != "1"]
        moved: dict[tuple[str, str], list[str]] = {}
        for index, row in enumerate(waiting):
            target = targets[index % len(targets)]
            self._seqno += 1  # INSERT … SELECT: a new seqno in the target table
            self.tables[target].append(replace(row, seqno=self._seqno))
            moved.setdefault((row.run_ref, target), []).append(row.dest_no)
        for (run_ref, target), numbers in moved.items():
            self._entry("move", run_ref, target, numbers)
        return len(waiting)

    async def read_results(
        self,
        live: Sequence[str],
        logs: Sequence[str],
        key: RunRowKey,
        since: Mapping[str, datetime | None],
    ) -> tuple[list[Result], int]:
        found, in_flight = [], 0
        for t in live:
            for r in self.tables.get(t, []):
                if r.of(key) and r.rsv1 == "4":
                    found.append(Result(r.dest_no, r.status_code, r.mob_company, r.result_at, t))
                elif r.of(key) and r.rsv1 in ("2", "3"):
                    in_flight += 1
        for t in logs:
            mark = since.get(t)
            for r in self.tables.get(t, []):
                if r.of(key) and (mark is None or (r.result_at and r.result_at >= mark)):
                    found.append(Result(r.dest_no, r.status_code, r.mob_company, r.result_at, t))
        return found, in_flight


@dataclass
class FakeLeases:
    """`ports.Leases` in memory: group → run id."""

    held: dict[str, str] = field(default_factory=dict)

    async def acquire(self, group: str, run_id: str) -> bool:
        if self.held.get(group, run_id) != run_id:
            return False
        self.held[group] = run_id
        return True

    async def renew(self, group: str, run_id: str) -> bool:
        return await self.acquire(group, run_id)

    async def release(self, group: str, run_id: str) -> None:
        if self.held.get(group) == run_id:
            del self.held[group]


@dataclass
class FakeAgents:
    """`ports.AgentWatch`: the agent monitor's statuses, set by the test."""

    statuses: dict[int, AgentStatus] = field(default_factory=dict)

    def set(self, number: int, state: AgentState, waiting: int = 0) -> None:
        self.statuses[number] = AgentStatus(
            number,
            f"SMSQ_SEND_{number}",
            "",
            "127.0.0.1:1",
            state,
            state != AgentState.UNREACHABLE,
            Backlog(waiting, waiting, 0, 0),
            DAY,
        )


@dataclass
class Fakes:
    ctx: Context
    book: FakeBook
    tables: FakeAgentTables
    leases: FakeLeases
    agents: FakeAgents
    clock: SetClock
    monotonic: Monotonic


def dispatcher(tmp_path: Path, **settings: Any) -> Fakes:
    """A dispatcher context on fakes, for the simulated example's line groups (bulk-1:
    agents 1-3, bulk-2: 4-6, bulk-3: 7-9); `settings` override `[dispatch]`."""
    raw = tomllib.loads(sim_example(tmp_path))
    raw["node"]["id"] = NODE
    raw["dispatch"] = {**raw.get("dispatch", {}), **settings}
    config = validate(raw)
    clock = SetClock(DAY)
    book, tables, leases, agents = FakeBook(clock), FakeAgentTables(), FakeLeases(), FakeAgents()
    for number in range(1, 12):
        agents.set(number, AgentState.OK)
    monotonic = Monotonic()
    ctx = Context(
        Runtime(config=config, clock=clock),
        book=book,
        tables=tables,
        leases=leases,
        agents=agents,
        monotonic=monotonic,
    )
    return Fakes(ctx, book, tables, leases, agents, clock, monotonic)
