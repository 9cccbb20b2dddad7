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

from dataclasses import dataclass

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


async def record_metrics(conn: Conn, refs: list[str], metrics: RunMetrics) -> bool:
    """Set the run's counters on its training row, found under any of `refs` (the latest
    result sync wins); a spam test's blocked count stays, 0 until one is known. False when
    the web logged no row for this send (nothing is created: the row's other columns are
    the web's to write)."""
    status = await conn.execute(
        """UPDATE ai_training_logs SET sent_count = $2, success_count = $3, fail_count = $4,
               spam_blocked = COALESCE(spam_blocked, 0), metrics_updated_at = now()
           WHERE source_ref = ANY($1::text[])""",
        refs,
        metrics.sent,
        metrics.success,
        metrics.fail,
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
