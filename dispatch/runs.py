"""Campaign runs in PostgreSQL: the intake contract the web service writes, and reads.

A run is one row in ``campaign_runs`` (tagged with the node id that must send
it) and one row per recipient in ``campaign_run_recipients`` with the final,
personalised text. ``NOTIFY hanjullo_runs`` wakes the daemon; it also polls.
Counters are kept on the run row and updated incrementally by the dispatcher.
See docs/dispatch.md.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import asyncpg

from config.names import MessageType
from dispatch.guards import RunRejected, check_ad_run

NOTIFY_CHANNEL = "hanjullo_runs"


class RunStatus(StrEnum):
    QUEUED = "queued"  # waiting for a line group (or for its scheduled time)
    SENDING = "sending"  # holds a group, inserting rows
    DRAINING = "draining"  # everything inserted; holds the group until agents took it all
    RESULTS = "results"  # group released; waiting for the last results
    HELD = "held"  # advertising run outside 08:00-21:00 KST
    PAUSED = "paused"
    CANCELLED = "cancelled"
    COMPLETED = "completed"
    REJECTED = "rejected"


HOLDS_GROUP = (RunStatus.SENDING, RunStatus.DRAINING)
ACTIVE = (
    RunStatus.QUEUED,
    RunStatus.SENDING,
    RunStatus.DRAINING,
    RunStatus.RESULTS,
    RunStatus.HELD,
    RunStatus.PAUSED,
)


@dataclass(frozen=True, slots=True)
class Recipient:
    phone: str
    text: str
    subject: str | None = None
    attachments: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RunSpec:
    node_id: str
    company_id: str
    callback: str
    message_type: MessageType = MessageType.SMS
    user_id: str | None = None
    subject: str | None = None
    is_ad: bool = False
    scheduled_at: datetime | None = None
    campaign_id: uuid.UUID | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _records(
    run_id: uuid.UUID, spec: RunSpec, recipients: Iterable[Recipient]
) -> Iterator[tuple[Any, ...]]:
    for seq, r in enumerate(recipients, start=1):
        # Ad form is checked on every text: one slip makes the whole run illegal.
        check_ad_run(spec.is_ad, r.text)
        yield (run_id, seq, r.phone, r.text, r.subject or spec.subject, list(r.attachments) or None)


async def create_run(
    conn: asyncpg.Connection, spec: RunSpec, recipients: Iterable[Recipient]
) -> uuid.UUID:
    """Store a run and its recipients in one transaction and wake the daemon.

    Raises RunRejected (nothing stored) when an advertising text breaks the rules.
    """
    run_id = uuid.uuid4()
    async with conn.transaction():
        await conn.execute(
            """INSERT INTO campaign_runs (id, campaign_id, node_id, company_id, user_id,
                   callback_number, message_type, message_subject, is_ad, scheduled_at,
                   status, queued_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'queued', now())""",
            run_id,
            spec.campaign_id,
            spec.node_id,
            spec.company_id,
            spec.user_id,
            spec.callback,
            spec.message_type.value,
            spec.subject,
            spec.is_ad,
            spec.scheduled_at,
        )
        await conn.copy_records_to_table(
            "campaign_run_recipients",
            records=_records(run_id, spec, recipients),
            columns=["run_id", "seq", "phone", "message_text", "subject", "attachments"],
        )
        first = await conn.fetchrow(
            """UPDATE campaign_runs SET target_count =
                   (SELECT count(*) FROM campaign_run_recipients WHERE run_id = $1),
                   message_content = (SELECT message_text FROM campaign_run_recipients
                                      WHERE run_id = $1 AND seq = 1)
               WHERE id = $1 RETURNING target_count""",
            run_id,
        )
        if first is None or first["target_count"] == 0:
            raise RunRejected("a run needs at least one recipient; fix: check the input file")
        await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, spec.node_id)
    return run_id


async def show(conn: asyncpg.Connection | Any, run_id: uuid.UUID) -> dict[str, Any] | None:
    """The operator's view of one run (`hanjulloctl run show`)."""
    row = await conn.fetchrow("SELECT * FROM campaign_runs WHERE id = $1", run_id)
    if row is None:
        return None
    skipped = row["skipped"]
    if isinstance(skipped, str):
        skipped = json.loads(skipped)
    success, fail = row["success_count"], row["fail_count"]
    return {
        "run_id": str(row["id"]),
        "node_id": row["node_id"],
        "company": row["company_id"],
        "user": row["user_id"],
        "status": row["status"],
        "reason": row["status_reason"],
        "line_group": row["line_group"],
        "message_type": row["message_type"],
        "is_ad": row["is_ad"],
        "target": row["target_count"],
        "inserted": row["inserted_count"],
        "sent": row["sent_count"],
        "success": success,
        "fail": fail,
        "pending": max(0, row["inserted_count"] - success - fail),
        "skipped": {str(k): int(v) for k, v in (skipped or {}).items()},
        "queued_at": row["queued_at"].isoformat() if row["queued_at"] else None,
        "started_at": row["started_at"].isoformat() if row["started_at"] else None,
        "completed_at": row["completed_at"].isoformat() if row["completed_at"] else None,
    }


def source_ref(secret: str, run_id: uuid.UUID) -> str:
    """A run's key in ai_training_logs: HMAC-SHA256(secret, run id), so a training row
    cannot be traced back to its run without the node's secret."""
    return hmac.new(secret.encode(), str(run_id).encode(), hashlib.sha256).hexdigest()
