"""``ai_training_logs``: a run's sending metrics for the training set, and the carriers
its spam tests found blocked. The one owner of that table's statements.

A row is keyed by ``source_ref`` (`dispatch.runs.source_ref`: an HMAC of the run id, so a
row cannot be traced back to its run without the node's secret); the caller computes it.
Owns no connection and no engine state.
"""

from __future__ import annotations

from dataclasses import dataclass

from dispatch.store.runs import Conn, Run


@dataclass(frozen=True, slots=True)
class RunMetrics:
    """What the training set learns of a run's sending."""

    company_id: str
    channel: str  # the message type
    sent: int
    success: int
    fail: int
    spam_blocked: int

    @classmethod
    def of(cls, run: Run) -> RunMetrics:
        return cls(
            run.company_id,
            run.message_type,
            run.sent_count,
            run.success_count,
            run.fail_count,
            run.spam_count,
        )


async def record_metrics(conn: Conn, ref: str, metrics: RunMetrics) -> None:
    """Set the run's counters (the latest result sync wins)."""
    await conn.execute(
        """INSERT INTO ai_training_logs (source_ref, company_id, channel, sent_count,
               success_count, fail_count, spam_blocked, metrics_updated_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, now())
           ON CONFLICT (source_ref) DO UPDATE SET sent_count = EXCLUDED.sent_count,
               success_count = EXCLUDED.success_count,
               fail_count = EXCLUDED.fail_count, spam_blocked = EXCLUDED.spam_blocked,
               metrics_updated_at = now()""",
        ref,
        metrics.company_id,
        metrics.channel,
        metrics.sent,
        metrics.success,
        metrics.fail,
        metrics.spam_blocked,
    )


@dataclass(frozen=True, slots=True)
class SpamBlocked:
    """Carriers a spam test of a run found blocked (`dispatch/spamtests/store.py`)."""

    ref: str  # the run's source_ref
    company_id: str | None
    blocked: int


async def add_spam_test_blocked(conn: Conn, blocked: SpamBlocked) -> None:
    """Add a completed spam test's blocked carriers to its run's row (created if the run
    has no metrics yet); result sync's counters are left alone."""
    await conn.execute(
        """INSERT INTO ai_training_logs (source_ref, company_id, spam_test_blocked,
               metrics_updated_at) VALUES ($1, $2, $3, now())
           ON CONFLICT (source_ref) DO UPDATE SET
               spam_test_blocked = ai_training_logs.spam_test_blocked + $3,
               metrics_updated_at = now()""",
        blocked.ref,
        blocked.company_id,
        blocked.blocked,
    )
