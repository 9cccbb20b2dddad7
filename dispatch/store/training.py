"""``ai_training_logs``: a run's sending metrics for the training set, and the carriers
its spam test found blocked. The one owner of that table's statements.

The table is the web service's (its training logger inserts each row when it queues the
send, utils/training-logger.ts:281-302); the node only updates the metric columns of a row
that exists, exactly as the web's own ``updateTrainingMetrics`` does (:341-365), and never
inserts one. A row is keyed by ``source_ref`` (`dispatch.runs.source_ref`: the first 32
hex characters of an HMAC, so a row cannot be traced back to its run without the secret);
the caller computes it. Nothing here writes a company id, user id or phone number.
Owns no connection and no engine state.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from config.names import message_hash
from dispatch.store.runs import Conn, Run


@dataclass(frozen=True, slots=True)
class RunMetrics:
    """What the training set learns of a run's sending."""

    sent: int
    success: int
    fail: int

    @classmethod
    def of(cls, run: Run) -> RunMetrics:
        return cls(run.sent_count, run.success_count, run.fail_count)


# The carriers that judged a text blocked in the company's latest completed spam test of
# it, matched by the web's message hash: the web's own tests or the node's, whichever came
# last; 0 when there is none.
SPAM_BLOCKED_SQL = """
WITH latest AS (
    (SELECT 'web' AS source, t.id, t.created_at FROM spam_filter_tests t
     WHERE t.company_id::text = $1 AND t.message_hash = $2 AND t.status = 'completed'
     ORDER BY t.created_at DESC LIMIT 1)
    UNION ALL
    (SELECT 'node', t.id, t.created_at FROM hanjullo.spam_tests t
     WHERE t.company_id = $1 AND t.message_hash = $2 AND t.status = 'completed'
     ORDER BY t.created_at DESC LIMIT 1)
    ORDER BY created_at DESC LIMIT 1
)
SELECT CASE l.source
    WHEN 'web' THEN (SELECT count(DISTINCT r.carrier) FROM spam_filter_test_results r
                     WHERE r.test_id = l.id AND r.result = 'blocked')
    ELSE (SELECT count(DISTINCT r.carrier) FROM hanjullo.spam_test_results r
          WHERE r.test_id = l.id AND r.result = 'blocked') END
FROM latest l
"""


async def spam_blocked(conn: Conn, company_id: str, text: str | None) -> int:
    """`SPAM_BLOCKED_SQL` for a run's company and text."""
    if not text:
        return 0
    found = await conn.fetchval(SPAM_BLOCKED_SQL, company_id, message_hash(text))
    return int(found or 0)


async def record_metrics(
    conn: Conn, refs: list[str], metrics: RunMetrics, run_id: uuid.UUID | None = None
) -> bool:
    """Set the run's counters on its training row, found under any of `refs` (the latest
    result sync wins), with `spam_blocked` of the company's latest spam test of the run's
    text (`run_id`: the run they are read from; never written there). False when the web
    logged no row for this send (nothing is created: the row's other columns are the
    web's to write)."""
    blocked = 0
    if run_id is not None:
        run = await conn.fetchrow(
            "SELECT company_id, message_content FROM hanjullo.runs WHERE id = $1", run_id
        )
        if run is not None:
            blocked = await spam_blocked(conn, run["company_id"], run["message_content"])
    status = await conn.execute(
        """UPDATE ai_training_logs SET sent_count = $2, success_count = $3, fail_count = $4,
               spam_blocked = $5, metrics_updated_at = now()
           WHERE source_ref = ANY($1::text[])""",
        refs,
        metrics.sent,
        metrics.success,
        metrics.fail,
        blocked,
    )
    return status != "UPDATE 0"


@dataclass(frozen=True, slots=True)
class SpamBlocked:
    """Carriers the latest spam test of a run's text found blocked
    (`dispatch/spamtests/store.py`)."""

    ref: str  # the run's source_ref
    blocked: int


async def set_spam_blocked(conn: Conn, blocked: SpamBlocked) -> None:
    """A completed spam test's blocked carriers on its run's training row: the latest test
    replaces an earlier one's count; result sync's counters are left alone."""
    await conn.execute(
        """UPDATE ai_training_logs SET spam_blocked = $2, metrics_updated_at = now()
           WHERE source_ref = $1""",
        blocked.ref,
        blocked.blocked,
    )
