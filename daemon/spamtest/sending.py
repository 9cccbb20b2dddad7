"""Starting queued tests and their rows in the test agent tables: the queue's order,
the result rows, the agent rows (exactly once, across restarts), and the agent's final
codes.

A row's sequence number is recorded after the MySQL commit; a row without one may have
been committed just before a crash, so it is looked for in the live and log tables
before anything is sent again. The log tables are those of the node clock's months
(`dispatch.agent_tables.log_tables_between`, as the agents name them: docs/clock.md).
Must not decide a verdict (`verdicts.py`) or write agent rows other than through
`TestTables`.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import timedelta

import structlog

from config.clock import KST
from config.names import MessageType
from daemon.spamtest import phones, verdicts
from daemon.spamtest.context import SpamContext
from daemon.spamtest.state import ActiveTest, Slot
from dispatch import agent_tables
from dispatch.agent_tables import SUCCESS_CODES
from dispatch.fairness import Row, fair_order
from dispatch.handoff import AgentRow
from dispatch.spamtests.contract import CANARY, CARRIERS, TestStatus, Verdict
from dispatch.spamtests.store import NewResult

log = structlog.get_logger("spamtests")

# Queued tests read per pass.
QUEUE_READ = 500
# How far back a test's agent row is looked for in log tables: this month and the last.
LOG_LOOKBACK = timedelta(days=31)
# Seconds a send takes to reach the agent and its success to be seen, at least.
SEND_ROOM_S = 2.0


def window_too_short(ctx: SpamContext, deadline: float | None) -> bool:
    """Whether a web test's window has too little left for a `blocked` to be possible
    (the minimum grace, the storage read after it, the send): it is not sent, every
    carrier `timeout`, since nothing but a pass or a timeout could come of it and the
    web would bill it (docs/spam-tests.md)."""
    if deadline is None:
        return False
    room = ctx.section.grace_min_s + verdicts.READ_WAIT_S + SEND_ROOM_S
    return deadline - ctx.monotonic() < room


async def take_web_tests(ctx: SpamContext) -> None:
    """The web's new tests join the queue (`dispatch/spamtests/store.py:take_web_tests`);
    one the node cannot run is completed at once, with its reason, and logged."""
    taken, rejected = await ctx.book.take_web_tests(QUEUE_READ, ctx.section.web_window_s)
    for reason in rejected:
        log.warning("web spam test rejected", reason=reason)
    if taken:
        log.info("web spam tests taken", count=taken)


async def start_queued(ctx: SpamContext) -> None:
    """Start every queued test a phone is free for, fairly across companies; the rest
    make the queue's view. A web test with too little of its window left to be decided
    is started with every carrier `timeout` and nothing sent."""
    queued = await ctx.book.tests_in(TestStatus.QUEUED, QUEUE_READ)
    order = fair_order(queued, ctx.last_served, arrival="created_at")
    started: set[uuid.UUID] = set()
    for test in order:
        deadline = ctx.deadline(test)
        if window_too_short(ctx, deadline):
            outcome = await start(ctx, test, dict.fromkeys(CARRIERS), deadline, out_of_time=True)
        else:
            chosen = phones.plan(ctx, test)
            if chosen is None:
                continue
            outcome = await start(ctx, test, chosen, deadline)
        if outcome:
            started.add(test["id"])
    now = ctx.now()
    ctx.queue_view = [
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


async def start(
    ctx: SpamContext,
    row: Row,
    chosen: Mapping[str, str | None],
    deadline: float | None = None,
    out_of_time: bool = False,
) -> bool:
    """Start one test on the chosen phones; False when it was cancelled meanwhile.
    `out_of_time`: every carrier is `timeout` at once and nothing is sent."""
    test = ActiveTest.of(row, ctx.now())
    test.deadline = deadline
    table = phones.pick_table(ctx)
    # What each message type's receipt will be: what plan() checked the sharing with.
    expected = dict(zip(test.message_types, phones.expected_receipts(test), strict=True))
    slots: list[Slot] = []
    for carrier, label in chosen.items():
        config = phones.modem_config(ctx, label)
        for mtype in test.message_types:
            reason = None
            verdict = Verdict.DEVICE_ERROR
            if out_of_time:
                verdict = Verdict.TIMEOUT
                reason = (
                    f"too little of the web's window was left "
                    f"{float(row['age_s']):.0f}s after the test was created"
                )
            elif label is None:
                reason = phones.unusable_reason(ctx, carrier, row["target_modem"])
            elif table is None:
                reason = "no test line group configured"
            slot = Slot(
                0,  # the result row's id, once written
                carrier,
                mtype,
                label if reason is None else None,
                config.phone if config else None,
                table if reason is None else None,
                expected[mtype],
            )
            if reason:
                slot.result, slot.detail = verdict.value, reason
            slots.append(slot)
    written = await ctx.book.start_test(
        test.id,
        [
            NewResult(
                s.carrier,
                s.mtype,
                s.phone,
                s.modem,
                s.table,
                s.expected.text_hash,
                Verdict(s.result) if s.result else None,
                s.detail,
            )
            for s in slots
        ],
    )
    if written is None:
        return False  # cancelled meanwhile
    test.started_at, ids = written
    test.started_mono = ctx.monotonic()
    for slot, result_id in zip(slots, ids, strict=True):
        slot.result_id = result_id
    test.slots = slots
    phones.hold(ctx, test.slots, test.id)
    ctx.active[test.id] = test
    ctx.last_served[test.company] = test.started_at
    log.info(
        "spam test started",
        test=str(test.id),
        company=test.company,
        source=test.source,
        phones={s.carrier: s.modem for s in test.slots},
    )
    await ensure_sent(ctx, test, fresh=True)
    return True


async def send_pending(ctx: SpamContext) -> None:
    for test in list(ctx.active.values()):
        await ensure_sent(ctx, test)


async def ensure_sent(ctx: SpamContext, test: ActiveTest, fresh: bool = False) -> None:
    """Write the test's rows that are not in the agent tables yet, in one transaction.

    A row without a recorded sequence number may have been committed to MySQL just
    before a crash (or a lost connection): unless the test was started just now
    (`fresh`), it is looked for in the live and log tables and adopted, never sent
    twice."""
    unsent = [s for s in test.slots if s.sendable and s.seqno is None and s.result is None]
    # Resumed too late in its window (a restart): nothing more is sent, what was sent is
    # still looked for below; the deadline times the rest out.
    late = not fresh and window_too_short(ctx, test.deadline)
    for slot in [] if fresh else list(unsent):
        assert slot.table is not None and slot.phone is not None
        found = await ctx.tables.find_row(
            [slot.table, *await log_tables(ctx, slot.table)],
            str(test.id),
            slot.phone,
            slot.mtype.agent_code,
        )
        if found is not None:
            slot.seqno = found
            slot.inserted_at = slot.inserted_at or test.started_at
            if slot.sent_mono is None:
                slot.sent_mono = test.started_mono
            slot.sent_recorded = False
            unsent.remove(slot)
            log.info("spam test row found after a restart", test=str(test.id))
    rows = []
    for slot in [] if late else unsent:
        assert slot.table is not None and slot.phone is not None
        rows.append(
            (
                slot.table,
                AgentRow(
                    slot.phone,
                    test.callback,
                    test.text_for(slot.mtype),
                    slot.mtype.agent_code,
                    test.subject if slot.mtype == MessageType.LMS else None,
                    None,
                    None,
                    None,
                    str(test.id),
                    test.company or (CANARY if test.source == CANARY else ""),
                ),
            )
        )
    if rows:
        seqnos = await ctx.tables.insert(rows)
        now, mono = ctx.now(), ctx.monotonic()
        for slot, seqno in zip(unsent, seqnos, strict=True):
            # Kept in memory at once (the row is in MySQL: never sent again), and
            # recorded in PostgreSQL until that commits.
            slot.seqno, slot.inserted_at, slot.sent_mono = seqno, now, mono
            slot.sent_recorded = False
    pending = [s for s in test.slots if s.seqno is not None and s.sendable and not s.sent_recorded]
    if pending:
        await ctx.book.record_sent(
            [(s.result_id, s.seqno, s.inserted_at) for s in pending if s.seqno is not None]
        )
        for slot in pending:
            slot.sent_recorded = True


async def log_tables(ctx: SpamContext, table: str) -> list[str]:
    """The test table's log tables of this month and the last that exist (the node
    clock's months, as the agents name them: docs/clock.md); looked up once per node
    clock day, not on every pass (housekeeping creates them months ahead)."""
    now = ctx.clock.now()
    today = now.astimezone(KST).date()
    key = (table, today)
    if key not in ctx.log_table_cache:
        names = agent_tables.log_tables_between([table], now - LOG_LOOKBACK, now)
        found = await ctx.tables.existing(names)
        ctx.log_table_cache = {k: v for k, v in ctx.log_table_cache.items() if k[1] == today}
        ctx.log_table_cache[key] = found
    return ctx.log_table_cache[key]


async def poll_agents(ctx: SpamContext) -> None:
    """Read the agent's final code of every sent row still waiting for one; a success
    starts the row's blocked grace."""
    waiting: dict[str, dict[int, Slot]] = {}
    for test in ctx.active.values():
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
    seen: list[tuple[Slot, int]] = []
    refs = [str(t) for t in ctx.active]
    for table, by_seq in waiting.items():
        logs = await log_tables(ctx, table)
        for seqno, code in await ctx.tables.final_codes(table, logs, list(by_seq), refs):
            found = by_seq.get(seqno)
            if found is None or found.agent_code:
                continue
            seen.append((found, code))
    if not seen:
        return
    # Memory follows the database: the codes are kept once PostgreSQL has them (a failed
    # commit reads them again on the next pass).
    now, mono = ctx.now(), ctx.monotonic()
    await ctx.book.record_agent_codes(
        [(s.result_id, code, now if code in SUCCESS_CODES else None) for s, code in seen]
    )
    for slot, code in seen:
        slot.agent_code = code
        if code in SUCCESS_CODES:
            slot.success_seen_at, slot.success_mono = now, mono
