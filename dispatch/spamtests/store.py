"""The spam tests' PostgreSQL store: every statement on ``hanjullo.spam_tests``,
``hanjullo.spam_test_results`` and the attribution columns of ``hanjullo.modem_receipts``.

Functions take a connection (or a pool's connection proxy) and hold no state; the engine
reaches them through one interface (`daemon/spamtest/ports.py:SpamBook`), so no engine
module names a table. A completed test's blocked count goes to ``ai_training_logs``
through its one owner, `dispatch/store/training.py`. Must not hold engine state or decide
a verdict (`rules.py`).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from config.names import MessageType, message_hash
from dispatch.fairness import Row
from dispatch.guards import RunRejected
from dispatch.spamtests import web
from dispatch.spamtests.contract import (
    CANARY,
    NOTIFY_CHANNEL,
    SpamTestRejected,
    SpamTestSpec,
    TestStatus,
    Verdict,
)
from dispatch.spamtests.report import report
from dispatch.spamtests.rules import overall
from dispatch.store import training
from dispatch.store import web as web_store
from dispatch.store.runs import Conn

TEST_COLUMNS = """id, company_id, status, overall, source, variant_id, batch_id,
    message_content_sms, created_at, started_at, completed_at, status_reason, web"""
RESULT_COLUMNS = """test_id, carrier, message_type, modem, result, status_code,
    receipt_delay_s, late, late_delay_s, late_from, detail"""
# A test's age in PostgreSQL's own time (its deadline is counted from created_at).
AGE = "extract(epoch FROM clock_timestamp() - created_at)::float8 AS age_s"


# ---- intake and reports ---------------------------------------------------------------------
async def create_tests(
    conn: Any, specs: Sequence[SpamTestSpec], batch: bool = False, create_companies: bool = False
) -> tuple[list[uuid.UUID], uuid.UUID | None]:
    """Queue the tests in one transaction (a batch shares one batch_id); NOTIFY the daemon.

    A test of a company (or of none) is created as the web service's queue creates one,
    in its tables (`web.create_test`), and taken into the node's table under the same id;
    a canary is the node's own. `company_id` is a ``companies`` id (or, on a simulated node
    with `create_companies`, a company code made on first use, its sender number
    registered for it, as `hanjulloctl send` makes one)."""
    for spec in specs:
        spec.check()
    batch_id = uuid.uuid4() if batch else None
    ids: list[uuid.UUID] = []
    async with conn.transaction():
        for spec in specs:
            if spec.source == CANARY:
                ids.append(await insert_test(conn, spec, batch_id))
                continue
            company: uuid.UUID | None = None
            try:
                if spec.company_id:
                    company = await web_store.company_of(
                        conn, spec.company_id, spec.callback, simulated=create_companies
                    )
            except RunRejected as exc:
                raise SpamTestRejected(str(exc)) from exc
            user = await web_store.user_of(conn, spec.user_id)
            test_id, created_at = await web.create_test(conn, spec, company, user, batch_id)
            ids.append(
                await insert_test(
                    conn,
                    replace(spec, company_id=str(company) if company else None),
                    batch_id,
                    test_id=test_id,
                    created_at=created_at,
                )
            )
        await conn.execute(f"NOTIFY {NOTIFY_CHANNEL}")
    return ids, batch_id


async def insert_test(
    conn: Conn,
    spec: SpamTestSpec,
    batch_id: uuid.UUID | None,
    *,
    test_id: uuid.UUID | None = None,
    created_at: datetime | None = None,
    status: TestStatus = TestStatus.QUEUED,
    reason: str | None = None,
) -> uuid.UUID:
    """The node's row of a test; with `test_id`, the web's test of that id (``web``)."""
    text = spec.sms_text if spec.sms_text is not None else spec.lms_text
    value = await conn.fetchval(
        """INSERT INTO hanjullo.spam_tests (id, node_id, company_id, user_id, callback_number,
               message_content_sms, message_content_lms, message_subject, message_hash,
               source, variant_id, batch_id, run_id, target_modem, created_at, web, status,
               status_reason, completed_at)
           VALUES (coalesce($1, gen_random_uuid()), $2, $3, $4, $5, $6, $7, $8, $9, $10,
                   $11, $12, $13, $14, coalesce($15, clock_timestamp()), $1 IS NOT NULL,
                   $16, $17, CASE WHEN $16 = 'completed' THEN now() END)
           ON CONFLICT (id) DO NOTHING
           RETURNING id""",
        test_id,
        spec.node_id,
        spec.company_id,
        spec.user_id,
        spec.callback,
        spec.sms_text,
        spec.lms_text,
        spec.subject,
        message_hash(text or ""),
        spec.source,
        spec.variant,
        batch_id,
        spec.run_id,
        spec.target_modem,
        created_at,
        status.value,
        reason,
    )
    # Taken already (the writer role changed hands mid-pass): the row there stands.
    return uuid.UUID(str(value)) if value is not None else uuid.UUID(str(test_id))


async def take_web_tests(
    conn: Conn, node_id: str, limit: int, window_s: float
) -> tuple[int, list[str]]:
    """Take the web's tests not taken yet into the node's table, each in a transaction of
    its own: one the node cannot run (no sender number, no text, a text too long) is
    completed at once, its web rows `failed`, with the reason in the node's row. Returns
    how many were taken and the rejections' reasons."""
    taken, rejected = 0, []
    for row in await web.untaken(conn, limit, window_s):
        spec = web.spec_of(row, node_id)
        try:
            spec.check()
            problem = None
        except SpamTestRejected as exc:
            problem = f"rejected: {exc}"
        async with conn.transaction():
            if problem is None:
                await insert_test(
                    conn, spec, row["batch_id"], test_id=row["id"], created_at=row["created_at"]
                )
            else:
                # Kept as it came (a test without any text is kept with an empty one).
                textless = spec.sms_text is None and spec.lms_text is None
                await insert_test(
                    conn,
                    replace(spec, sms_text="") if textless else spec,
                    row["batch_id"],
                    test_id=row["id"],
                    created_at=row["created_at"],
                    status=TestStatus.COMPLETED,
                    reason=problem,
                )
                await web.end(conn, row["id"], Verdict.FAILED)
                rejected.append(f"{row['id']}: {problem}")
        taken += 1
    return taken, rejected


async def show(conn: Conn, ident: uuid.UUID) -> list[dict[str, Any]]:
    """Reports of a test, or of every test of a batch (by batch id); [] when unknown."""
    tests = await conn.fetch(
        f"SELECT {TEST_COLUMNS} FROM hanjullo.spam_tests WHERE id = $1 OR batch_id = $1"
        " ORDER BY created_at, variant_id, id",
        ident,
    )
    if not tests:
        return []
    results = await conn.fetch(
        f"SELECT {RESULT_COLUMNS} FROM hanjullo.spam_test_results WHERE test_id = ANY($1::uuid[])"
        " ORDER BY carrier, message_type",
        [t["id"] for t in tests],
    )
    return [report(t, [r for r in results if r["test_id"] == t["id"]]) for t in tests]


async def nodes_of(conn: Conn, ident: uuid.UUID) -> set[str]:
    """The nodes a test, or the tests of a batch, belong to (empty when unknown)."""
    rows = await conn.fetch(
        "SELECT DISTINCT node_id FROM hanjullo.spam_tests WHERE id = $1 OR batch_id = $1", ident
    )
    return {r["node_id"] for r in rows}


# ---- what a restart reads -------------------------------------------------------------------
async def tests_in(
    conn: Conn, node_id: str, status: TestStatus, limit: int | None = None
) -> list[Row]:
    """The node's tests in `status`, first queued first (whole rows); all when `limit` is
    None."""
    return list(
        await conn.fetch(
            f"""SELECT *, {AGE} FROM hanjullo.spam_tests WHERE node_id = $1 AND status = $2
               ORDER BY created_at, id LIMIT $3""",
            node_id,
            status.value,
            limit,
        )
    )


async def results_of(conn: Conn, test_id: uuid.UUID) -> list[Row]:
    """A test's result rows in the order they were written (whole rows)."""
    return list(
        await conn.fetch(
            "SELECT * FROM hanjullo.spam_test_results WHERE test_id = $1 ORDER BY id", test_id
        )
    )


async def receipt_delays(
    conn: Conn, node_id: str, modems: list[str], count: int
) -> list[tuple[str, float]]:
    """The latest `count` success→receipt delays per carrier on these modems, oldest
    first, then the latest late receipts' (how the grace is rebuilt after a restart)."""
    passed = await conn.fetch(
        """SELECT carrier, delay FROM (
               SELECT carrier,
                      extract(epoch FROM received_at - success_seen_at)::float8 AS delay,
                      row_number() OVER (PARTITION BY carrier
                                         ORDER BY decided_at DESC) AS n
               FROM hanjullo.spam_test_results r JOIN hanjullo.spam_tests t
                    ON t.id = r.test_id AND t.node_id = $3
               WHERE modem = ANY($1::text[]) AND success_seen_at IS NOT NULL
                 AND result = 'pass' AND received_at IS NOT NULL AND NOT late) s
           WHERE n <= $2 ORDER BY n DESC""",
        modems,
        count,
        node_id,
    )
    late = await conn.fetch(
        """SELECT r.carrier, extract(epoch FROM m.received_at - r.success_seen_at)::float8
                  AS delay
           FROM hanjullo.spam_test_results r JOIN hanjullo.modem_receipts m
                ON m.id = r.late_receipt_id AND m.node_id = $3
           WHERE r.modem = ANY($1::text[]) AND r.late AND r.success_seen_at IS NOT NULL
           ORDER BY r.decided_at DESC LIMIT $2""",
        modems,
        count,
        node_id,
    )
    return [(r["carrier"], r["delay"]) for r in [*passed, *late] if r["delay"] is not None]


async def last_canaries(conn: Conn, node_id: str) -> list[tuple[str, str, datetime]]:
    """Each phone's latest completed canary: (modem, overall, completed_at)."""
    rows = await conn.fetch(
        """SELECT DISTINCT ON (target_modem) target_modem, overall, completed_at
           FROM hanjullo.spam_tests
           WHERE node_id = $1 AND source = $2 AND status = 'completed'
           ORDER BY target_modem, completed_at DESC""",
        node_id,
        CANARY,
    )
    return [(r["target_modem"], r["overall"], r["completed_at"]) for r in rows]


async def last_served(conn: Conn, node_id: str) -> dict[str | None, datetime]:
    """When each company's latest test started (the queue's fairness)."""
    rows = await conn.fetch(
        """SELECT company_id, max(started_at) AS at FROM hanjullo.spam_tests
           WHERE node_id = $1 AND started_at IS NOT NULL GROUP BY company_id""",
        node_id,
    )
    return {r["company_id"]: r["at"] for r in rows}


# ---- a test's life --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class NewResult:
    """One result row written when a test starts; `result` set when decided at once."""

    carrier: str
    mtype: MessageType
    phone: str | None
    modem: str | None
    table: str | None
    text_hash: str
    result: Verdict | None
    detail: str | None


async def start_test(
    conn: Conn, test_id: uuid.UUID, results: Sequence[NewResult], device_error: bool = False
) -> tuple[datetime, list[int]] | None:
    """Make a queued test active and write its result rows, in one transaction (a web
    test's too: `web.start`, and the verdicts decided at once): its start time and the
    rows' ids, or None when it is no longer queued (cancelled)."""
    async with conn.transaction():
        started = await conn.fetchrow(
            """UPDATE hanjullo.spam_tests SET status = 'active', started_at = now()
               WHERE id = $1 AND status = 'queued' RETURNING started_at, web""",
            test_id,
        )
        if started is None:
            return None
        ids = []
        for r in results:
            ids.append(
                await conn.fetchval(
                    """INSERT INTO hanjullo.spam_test_results (test_id, carrier, message_type,
                           phone, modem, sms_table, message_hash, result, detail, decided_at)
                       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9,
                               CASE WHEN $8::text IS NULL THEN NULL ELSE now() END)
                       RETURNING id""",
                    test_id,
                    r.carrier,
                    r.mtype.value,
                    r.phone,
                    r.modem,
                    r.table,
                    r.text_hash,
                    r.result.value if r.result else None,
                    r.detail,
                )
            )
        if started["web"]:
            await web.start(conn, test_id, [(r.carrier, r.mtype.value, r.phone) for r in results])
            decided = [i for i, r in zip(ids, results, strict=True) if r.result is not None]
            await web.write_results(conn, decided, device_error)
    return started["started_at"], ids


async def record_sent(conn: Conn, rows: Sequence[tuple[int, int, datetime | None]]) -> None:
    """(result id, agent seqno, inserted at): a row is in the agent table (after the
    MySQL commit); the first insert time is kept."""
    await conn.executemany(
        """UPDATE hanjullo.spam_test_results SET sms_msgkey = $2,
               inserted_at = coalesce(inserted_at, $3) WHERE id = $1""",
        rows,
    )


async def record_agent_codes(conn: Conn, rows: Sequence[tuple[int, int, datetime | None]]) -> None:
    """(result id, the agent's final code, when a success was first seen)."""
    await conn.executemany(
        """UPDATE hanjullo.spam_test_results SET status_code = $2,
               success_seen_at = $3 WHERE id = $1""",
        rows,
    )


async def record_verdicts(
    conn: Conn, rows: Sequence[tuple[int, Verdict, str | None]], device_error: bool = False
) -> None:
    """(result id, verdict, detail) of undecided rows; a decided row keeps its verdict.
    A web test's rows get them too, in the same transaction."""
    async with conn.transaction():
        await conn.executemany(
            """UPDATE hanjullo.spam_test_results SET result = $2, detail = $3,
                   decided_at = now() WHERE id = $1 AND result IS NULL""",
            [(rid, verdict.value, detail) for rid, verdict, detail in rows],
        )
        await web.write_results(conn, [rid for rid, _, _ in rows], device_error)


async def complete_test(
    conn: Conn,
    test_id: uuid.UUID,
    verdict: Verdict,
    blocked: training.SpamBlocked | None,
) -> None:
    """The test is completed with its overall verdict (a web test in the web's table
    too); a test of a run adds its blocked carriers to the run's training row, in the
    same transaction."""
    async with conn.transaction():
        was_web = await conn.fetchval(
            """UPDATE hanjullo.spam_tests SET status = 'completed', overall = $2,
                   completed_at = now() WHERE id = $1 AND status = 'active' RETURNING web""",
            test_id,
            verdict.value,
        )
        if was_web:
            await web.complete(conn, test_id)
        if blocked is not None:
            await training.set_spam_blocked(conn, blocked)


async def cancel_test(conn: Conn, node_id: str, test_id: uuid.UUID) -> tuple[bool, str] | None:
    """Cancel a queued or active test: (True, 'cancelled'); (False, its status) when it
    was neither; None when there is no such test. A web test is completed in the web's
    table (the web knows no cancelled test), its undecided rows `timeout`: never a pass."""
    async with conn.transaction():
        cancelled = await conn.fetchrow(
            """UPDATE hanjullo.spam_tests SET status = 'cancelled', completed_at = now(),
                   status_reason = 'cancelled by operator'
               WHERE id = $1 AND node_id = $2 AND status IN ('queued', 'active')
               RETURNING status, web""",
            test_id,
            node_id,
        )
        if cancelled is not None:
            if cancelled["web"]:
                await web.end(conn, test_id, Verdict.TIMEOUT)
            return True, str(cancelled["status"])
    current = await conn.fetchval("SELECT status FROM hanjullo.spam_tests WHERE id = $1", test_id)
    return None if current is None else (False, str(current))


# ---- receipts -------------------------------------------------------------------------------
async def unmatched_receipts(conn: Conn, node_id: str, limit: int) -> list[Row]:
    """Receipts not attributed yet, in the order they were recorded."""
    return list(
        await conn.fetch(
            """SELECT id, modem, carrier, kind, sender, text_hash, subject, mms_size,
                      complete, received_at
               FROM hanjullo.modem_receipts WHERE node_id = $1 AND match IS NULL
               ORDER BY id LIMIT $2""",
            node_id,
            limit,
        )
    )


async def mark_receipt(conn: Conn, receipt_id: int, how: str, test_id: uuid.UUID | None) -> None:
    """How a receipt was attributed: 'test', 'late' or 'unmatched'."""
    await conn.execute(
        "UPDATE hanjullo.modem_receipts SET match = $2, test_id = $3 WHERE id = $1",
        receipt_id,
        how,
        test_id,
    )


async def record_receipt(
    conn: Conn,
    result_id: int,
    test_id: uuid.UUID,
    receipt_id: int,
    received_at: datetime,
    delay_s: float | None,
) -> None:
    """A receipt passes its result row (a web test's rows too) and is marked as the
    test's, in one transaction."""
    async with conn.transaction():
        await conn.execute(
            """UPDATE hanjullo.spam_test_results SET received = true,
                   received_at = $2, receipt_id = $3, result = 'pass',
                   receipt_delay_s = $4, decided_at = now(), detail = NULL
               WHERE id = $1""",
            result_id,
            received_at,
            receipt_id,
            delay_s,
        )
        await web.write_results(conn, [result_id], False)
        await mark_receipt(conn, receipt_id, "test", test_id)


async def record_late(
    conn: Conn,
    result_id: int,
    test_id: uuid.UUID,
    receipt_id: int,
    received_at: datetime,
    delay_s: float | None,
) -> Verdict | None:
    """A receipt arrived after its row's verdict: the row passes, marked late with the
    verdict it had (``late_from``), as the web's own receipt route turns any row into
    `pass` (sf:378-502); a completed test's overall verdict follows; a web test's rows
    get the pass with ``received_at``. One transaction. Returns the test's overall verdict
    now (None while it is not completed)."""
    async with conn.transaction():
        await conn.execute(
            """UPDATE hanjullo.spam_test_results SET late = true, late_receipt_id = $2,
                   late_delay_s = $3, late_from = coalesce(late_from, result),
                   result = 'pass', received = true, received_at = $4,
                   detail = 'received after it was judged ' || coalesce(late_from, result)
               WHERE id = $1""",
            result_id,
            receipt_id,
            delay_s,
            received_at,
        )
        await web.write_results(conn, [result_id], False)
        await mark_receipt(conn, receipt_id, "late", test_id)
        status = await conn.fetchval(
            "SELECT status FROM hanjullo.spam_tests WHERE id = $1 FOR UPDATE", test_id
        )
        if status != TestStatus.COMPLETED:
            return None
        verdicts = await conn.fetch(
            "SELECT result FROM hanjullo.spam_test_results WHERE test_id = $1", test_id
        )
        now = overall(r["result"] for r in verdicts) or Verdict.DEVICE_ERROR
        await conn.execute(
            "UPDATE hanjullo.spam_tests SET overall = $2 WHERE id = $1", test_id, now.value
        )
        return now


async def decided_unreceived(
    conn: Conn, node_id: str, modem: str, horizon: timedelta, received_at: datetime
) -> list[Row]:
    """Result rows on this modem of tests no longer active (those in the engine's memory
    are matched there) that started before a receipt recorded at `received_at` and were
    decided without a receipt within `horizon`, latest first, with what matching them
    needs (a late receipt's candidates)."""
    return list(
        await conn.fetch(
            """SELECT r.id, r.test_id, r.carrier, r.result, r.inserted_at, r.success_seen_at,
                      r.message_type, t.callback_number, t.message_subject,
                      t.message_content_lms, r.message_hash
               FROM hanjullo.spam_test_results r JOIN hanjullo.spam_tests t ON t.id = r.test_id
               WHERE t.node_id = $3 AND r.modem = $1 AND NOT r.received AND NOT r.late
                 AND r.result IS NOT NULL AND r.result <> 'pass'
                 AND r.decided_at > now() - $2::interval
                 AND t.status <> 'active' AND t.started_at <= $4
               ORDER BY r.decided_at DESC""",
            modem,
            horizon,
            node_id,
            received_at,
        )
    )


async def prune_canaries(conn: Conn, node_id: str, retention: timedelta) -> str:
    """Delete the daemon's own finished canaries older than `retention` (they live as long
    as receipts); the command's status."""
    return str(
        await conn.execute(
            """DELETE FROM hanjullo.spam_tests WHERE node_id = $1 AND source = $3
               AND status IN ('completed', 'cancelled')
               AND completed_at < now() - $2::interval""",
            node_id,
            retention,
            CANARY,
        )
    )


# ---- capacity (daemon/capacity.py, docs/fleet.md) ---------------------------------------
# Spam tests use every phone at once: the phones are busy while any test is active.
PHONES_SQL = """
WITH w AS (
    SELECT $2::timestamptz AS now,
           tstzrange($2::timestamptz - interval '1 hour', $2::timestamptz) AS hour,
           tstzrange($2::timestamptz - interval '1 day', $2::timestamptz) AS day
), tests AS (
    SELECT tstzrange(started_at, greatest(started_at, coalesce(completed_at, w.now))) AS span,
           extract(epoch FROM started_at - created_at) AS wait_s
    FROM hanjullo.spam_tests, w
    WHERE node_id = $1 AND started_at IS NOT NULL
      AND coalesce(completed_at, w.now) >= lower(w.day)
), busy AS (
    SELECT range_agg(span * w.hour) AS hour, range_agg(span * w.day) AS day FROM tests, w
)
SELECT (SELECT coalesce(sum(extract(epoch FROM upper(r) - lower(r))), 0)::double precision
        FROM busy, unnest(busy.hour) AS r) AS busy_hour_s,
       (SELECT coalesce(sum(extract(epoch FROM upper(r) - lower(r))), 0)::double precision
        FROM busy, unnest(busy.day) AS r) AS busy_day_s,
       (SELECT percentile_cont(0.95) WITHIN GROUP (ORDER BY greatest(wait_s, 0))
        FROM tests, w WHERE lower(span) >= lower(w.hour)) AS wait_p95_hour_s,
       (SELECT percentile_cont(0.95) WITHIN GROUP (ORDER BY greatest(wait_s, 0))
        FROM tests) AS wait_p95_day_s
"""

TEST_COMPANIES_SQL = """
SELECT DISTINCT company_id FROM hanjullo.spam_tests
WHERE node_id = $1 AND created_at >= $2 AND company_id IS NOT NULL
"""


async def phones_busy(conn: Conn, node_id: str, now: datetime) -> dict[str, Any]:
    """Seconds the phones were busy with a test in the last hour and day (``busy_hour_s``,
    ``busy_day_s``), and the p95 wait from queued to started (``wait_p95_hour_s``,
    ``wait_p95_day_s``, None without tests)."""
    row = await conn.fetchrow(PHONES_SQL, node_id, now)
    assert row is not None  # aggregates: always one row
    return dict(row)


async def test_companies_since(conn: Conn, node_id: str, since: datetime) -> set[str]:
    return {r["company_id"] for r in await conn.fetch(TEST_COMPANIES_SQL, node_id, since)}
