"""Campaign runs: the intake contract the web service writes, and the operator's view.

A run is one row in ``hanjullo.runs`` (tagged with the node id that must send
it) and one row per recipient in ``hanjullo.run_recipients`` with the final,
personalised text. ``NOTIFY hanjullo_runs`` wakes the daemon; it also polls.
Counters are kept on the run row and updated incrementally by the dispatcher.
The rules a run is checked against on intake live here; the statements are the
store's (`dispatch/store/intake.py`). See docs/dispatch.md.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import asyncpg

from config.names import MessageType
from dispatch.guards import RunRejected, check_ad_run, run_field_problems
from dispatch.store import intake, web
from dispatch.store.runs import Conn, skip_counts


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
    conn: Conn,
    spec: RunSpec,
    recipients: Iterable[Recipient],
    *,
    run_id: uuid.UUID | None = None,
) -> uuid.UUID:
    """Store a run and its recipients in one transaction and wake the daemon (the
    hand-over; `run_id`: the campaign_runs id where the web made one).

    Raises RunRejected (nothing stored) when an advertising text breaks the rules or a
    run field does not fit the agent tables.
    """
    problems = run_field_problems(spec.company_id, spec.callback, spec.subject)
    if problems:
        raise RunRejected("; ".join(problems))
    run_id = run_id or uuid.uuid4()
    await intake.insert_run(
        conn,
        run_id,
        campaign_id=spec.campaign_id,
        node_id=spec.node_id,
        company_id=spec.company_id,
        user_id=spec.user_id,
        callback=spec.callback,
        message_type=spec.message_type.value,
        subject=spec.subject,
        is_ad=spec.is_ad,
        scheduled_at=spec.scheduled_at,
        recipients=_records(run_id, spec, recipients),
    )
    return run_id


@dataclass(frozen=True, slots=True)
class DirectSend:
    run_id: uuid.UUID  # the campaign_runs id
    campaign_id: uuid.UUID  # campaigns.id: what every agent row carries in app_etc1


async def send_direct(
    conn: Conn,
    spec: RunSpec,
    recipients: Iterable[Recipient],
    *,
    simulated: bool,
    now: datetime,
) -> DirectSend:
    """What the web service does for a direct send, then the hand-over, in one
    transaction (`hanjulloctl send`): the company named by `spec.company_id` (its
    companies.id; on a `simulated` node an unknown value becomes a company of that name and
    code, and the callback is registered for the company made), a ``campaigns`` row with
    send_type 'direct' and its ``campaign_runs`` row, then the node's run under the
    campaign_runs id with its recipients. Nothing is stored when the run is rejected.
    `now` is the node clock (it names the campaign)."""
    async with conn.transaction():
        company = await web.company_of(conn, spec.company_id, spec.callback, simulated=simulated)
        run_id = uuid.uuid4()
        campaign = await web.create_direct_campaign(
            conn,
            run_id,
            company=company,
            user=await web.user_of(conn, spec.user_id),
            message_type=spec.message_type.value,
            subject=spec.subject,
            callback=spec.callback,
            is_ad=spec.is_ad,
            scheduled_at=spec.scheduled_at,
            campaign_name=web.direct_campaign_name(now),
        )
        linked = replace(spec, company_id=str(company), campaign_id=campaign)
        await create_run(conn, linked, recipients, run_id=run_id)
        await web.set_targets(conn, run_id, campaign)
    return DirectSend(run_id, campaign)


async def show(conn: Conn, run_id: uuid.UUID) -> dict[str, Any] | None:
    """The operator's view of one run (`hanjulloctl run show`): by its run id, or, given a
    campaign id, that campaign's newest run."""
    row = await intake.run_row(conn, run_id)
    if row is None:
        newest = await intake.run_rows_of_campaign(conn, run_id, limit=1)
        row = newest[0] if newest else None
    return None if row is None else view(row)


async def listing(
    conn: Conn,
    node_id: str,
    *,
    company_id: str | None = None,
    campaign_id: uuid.UUID | None = None,
    statuses: tuple[str, ...] = (),
    limit: int = 100,
) -> list[dict[str, Any]]:
    """The views of a node's runs, newest first (the control plane's `GET /v1/runs`)."""
    rows = await intake.run_rows(
        conn,
        node_id,
        company_id=company_id,
        campaign_id=campaign_id,
        statuses=statuses,
        limit=limit,
    )
    return [view(row) for row in rows]


def view(row: asyncpg.Record | Mapping[str, Any]) -> dict[str, Any]:
    """One ``hanjullo.runs`` row as the operator and the control plane see it."""
    success, fail = row["success_count"], row["fail_count"]
    return {
        "run_id": str(row["id"]),
        "campaign_id": str(row["campaign_id"]) if row["campaign_id"] else None,
        "run_number": row["run_number"],
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
        "skipped": skip_counts(row["skipped"]),
        "scheduled_at": row["scheduled_at"].isoformat() if row["scheduled_at"] else None,
        "queued_at": row["queued_at"].isoformat() if row["queued_at"] else None,
        "started_at": row["started_at"].isoformat() if row["started_at"] else None,
        "completed_at": row["completed_at"].isoformat() if row["completed_at"] else None,
    }


def source_ref(secret: str, run_id: uuid.UUID) -> str:
    """A run's key in ai_training_logs as the web's training logger makes it
    (utils/training-logger.ts: the first 32 hex characters of HMAC-SHA256 keyed with its
    TRAINING_HMAC_SECRET of the id), so a training row cannot be traced back to its run
    without the secret."""
    return hmac.new(secret.encode(), str(run_id).encode(), hashlib.sha256).hexdigest()[:32]
