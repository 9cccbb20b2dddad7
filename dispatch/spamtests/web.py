"""Spam tests in the web service's tables (WEBSERVICE.md §4): a test created as the web's
queue creates one, the web's tests taken into the node's own table, and every verdict
written into the web's result rows in the web's vocabulary.

A web test is the ``spam_filter_tests`` row whose id is that of the node's
``hanjullo.spam_tests`` row (``web`` = true). The node changes on the web's tables only
what the web's own worker and receipt route change: a test's ``status`` (`active`, then
`completed` with ``completed_at``) and a result row's ``received``, ``received_at`` and
``result``; it inserts a result row only where the web created none for a carrier and
message type the node tests. Functions take a connection and run inside the caller's
transaction; they hold no state and decide no verdict (`rules.py`).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from config.names import MessageType, message_hash
from dispatch.fairness import Row
from dispatch.spamtests.contract import SpamTestSpec, Verdict
from dispatch.store.runs import Conn


# ---- creating a test as the web's queue does ------------------------------------------------
async def create_test(
    conn: Conn,
    spec: SpamTestSpec,
    company: uuid.UUID | None,
    user: uuid.UUID | None,
    batch_id: uuid.UUID | None,
) -> tuple[uuid.UUID, datetime]:
    """A queued ``spam_filter_tests`` row and one result row per active device for the
    test's message type, as utils/spam-test-queue.ts:enqueueSpamTest writes them; the id
    and created_at.

    ``created_at`` is the clock time of the insert: the web inserts each test of a batch in
    a statement of its own, so they keep their order in the first-in-first-out queue."""
    text = spec.sms_text if spec.sms_text is not None else spec.lms_text
    assert text is not None
    mtype = MessageType.SMS if spec.sms_text is not None else MessageType.LMS
    # utils/messageUtils.ts:325-334 (getOpt080Number): the user's own, else the company's
    # (its reject_number when that is empty).
    check_number = await conn.fetchval(
        """SELECT coalesce(
               (SELECT nullif(opt_out_080_number, '') FROM users WHERE id = $1),
               (SELECT coalesce(nullif(opt_out_080_number, ''), reject_number)
                FROM companies WHERE id = $2))""",
        user,
        company,
    )
    row = await conn.fetchrow(
        """INSERT INTO spam_filter_tests (company_id, user_id, callback_number,
               message_content_sms, message_content_lms, message_hash, spam_check_number,
               status, source, variant_id, batch_id, created_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, 'queued', $8, $9, $10, clock_timestamp())
           RETURNING id, created_at""",
        company,
        user,
        spec.callback,
        spec.sms_text,
        spec.lms_text,
        message_hash(text) or None,
        check_number,
        spec.source,
        spec.variant,
        batch_id,
    )
    assert row is not None
    await conn.execute(
        """INSERT INTO spam_filter_test_results (test_id, carrier, message_type, phone)
           SELECT $1, carrier, $2, phone FROM spam_filter_devices
           WHERE is_active = true ORDER BY carrier""",
        row["id"],
        mtype.value,
    )
    return uuid.UUID(str(row["id"])), row["created_at"]


# ---- taking the web's tests -----------------------------------------------------------------
async def untaken(conn: Conn, limit: int, window_s: float) -> list[Row]:
    """The web's tests waiting for a sender (``queued``, or ``active`` from its manual
    route) that the node has not taken yet and whose window (`window_s` from created_at)
    has not ended, oldest first, with the message type of their result rows (a web test is
    one type; its text columns may both be set). An older one is the web's own: its 60 s
    rule times it out when it is next read; the node neither sends nor bills it."""
    return list(
        await conn.fetch(
            """SELECT t.id, t.company_id, t.user_id, t.callback_number,
                      t.message_content_sms, t.message_content_lms, t.message_hash,
                      t.spam_check_number, t.source, t.variant_id, t.batch_id, t.status,
                      t.created_at,
                      (SELECT r.message_type FROM spam_filter_test_results r
                       WHERE r.test_id = t.id ORDER BY r.created_at, r.id LIMIT 1)
                          AS message_type
               FROM spam_filter_tests t
               WHERE t.status IN ('queued', 'active')
                 AND t.created_at > clock_timestamp() - make_interval(secs => $2)
                 AND NOT EXISTS (SELECT 1 FROM hanjullo.spam_tests h WHERE h.id = t.id)
               ORDER BY t.created_at, t.id LIMIT $1""",
            limit,
            window_s,
        )
    )


def spec_of(row: Row, node_id: str) -> SpamTestSpec:
    """The node's test for a web test: its one message type's text (an LMS's subject is
    '' as the web's queue sends it, stq:339), its source as the node knows sources."""
    mtype = row["message_type"] or ("SMS" if row["message_content_sms"] else "LMS")
    lms = mtype != MessageType.SMS.value
    return SpamTestSpec(
        node_id=node_id,
        callback=row["callback_number"] or "",
        sms_text=None if lms else row["message_content_sms"],
        lms_text=row["message_content_lms"] if lms else None,
        subject="" if lms else None,
        company_id=str(row["company_id"]) if row["company_id"] else None,
        user_id=str(row["user_id"]) if row["user_id"] else None,
        source=row["source"] if row["source"] in ("manual", "auto_ai") else "manual",
        variant=row["variant_id"],
    )


async def end(conn: Conn, test_id: uuid.UUID, verdict: Verdict) -> None:
    """A web test ended by the node before its verdicts: every undecided row `verdict`,
    the test completed (the reason is in the node's own row). An undecided row left NULL
    would read as a pass: the web's overall rule drops NULLs (stq:561-575)."""
    await conn.execute(
        """UPDATE spam_filter_test_results SET result = $2
           WHERE test_id = $1 AND result IS NULL AND NOT received""",
        test_id,
        verdict.value,
    )
    await complete(conn, test_id)


# ---- a test's life in the web's tables ------------------------------------------------------
async def start(
    conn: Conn, test_id: uuid.UUID, cells: Sequence[tuple[str, str, str | None]]
) -> None:
    """The test is `active`; a (carrier, message type, phone) the node tests that has no
    result row yet gets one, as the web's queue would have made it."""
    await conn.execute(
        "UPDATE spam_filter_tests SET status = 'active' WHERE id = $1 AND status = 'queued'",
        test_id,
    )
    await conn.executemany(
        """INSERT INTO spam_filter_test_results (test_id, carrier, message_type, phone)
           SELECT $1, $2::varchar, $3::varchar, $4 WHERE NOT EXISTS (
               SELECT 1 FROM spam_filter_test_results
               WHERE test_id = $1 AND carrier = $2 AND message_type = $3)""",
        [(test_id, carrier, mtype, phone) for carrier, mtype, phone in cells],
    )


# Each decided row of the node's web tests, in the web's result rows of its carrier and
# message type, in the web's vocabulary: its screens, billing and overall rule know pass,
# blocked, failed and timeout (SFM:237-252, stq:549-588), so `device_error` is written as
# `timeout` unless the web has learned the word (``spam_tests.web_device_error``: $2);
# every device's row of that carrier and type (the web shows the first per cell and
# would time out the others). A receipt's pass overwrites whatever is there, as the web's
# receipt route does (sf:378-502); any other verdict fills only an undecided row.
WRITE_RESULTS_SQL = """
UPDATE spam_filter_test_results w
SET received = r.received, received_at = r.received_at,
    result = CASE WHEN r.result = 'device_error' AND NOT $2 THEN 'timeout' ELSE r.result END
FROM hanjullo.spam_test_results r JOIN hanjullo.spam_tests t ON t.id = r.test_id AND t.web
WHERE r.id = ANY($1::bigint[]) AND r.result IS NOT NULL
  AND w.test_id = r.test_id AND w.carrier = r.carrier AND w.message_type = r.message_type
  AND (r.received OR (w.result IS NULL AND NOT w.received))
"""


async def write_results(conn: Conn, result_ids: Sequence[int], device_error: bool) -> None:
    """The verdicts of these node result rows, into the web's rows (web tests only)."""
    if result_ids:
        await conn.execute(WRITE_RESULTS_SQL, list(result_ids), device_error)


async def complete(conn: Conn, test_id: uuid.UUID) -> None:
    """The web's test is `completed` (a test the web itself completed keeps its time)."""
    await conn.execute(
        """UPDATE spam_filter_tests SET status = 'completed', completed_at = now()
           WHERE id = $1 AND status IS DISTINCT FROM 'completed'""",
        test_id,
    )
