"""What the web service writes for a run (``hanjulloctl send`` writes the same), and its
pruning once the run is long finished.

A run is one ``hanjullo.runs`` row and one ``hanjullo.run_recipients`` row per recipient,
written in one transaction and followed by ``NOTIFY hanjullo_runs`` (docs/dispatch.md).
The rules a run must follow are `dispatch/runs.py`'s; this module only stores it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import asyncpg

from dispatch.guards import RunRejected
from dispatch.store.runs import Conn

NOTIFY_CHANNEL = "hanjullo_runs"
RECIPIENT_COLUMNS = ["run_id", "seq", "phone", "message_text", "subject", "attachments"]


async def insert_run(
    conn: Conn,
    run_id: uuid.UUID,
    *,
    campaign_id: uuid.UUID | None,
    node_id: str,
    company_id: str,
    user_id: str | None,
    callback: str,
    message_type: str,
    subject: str | None,
    is_ad: bool,
    scheduled_at: datetime | None,
    recipients: Iterable[tuple[Any, ...]],
) -> int:
    """Store a queued run and its recipients (`RECIPIENT_COLUMNS` tuples) and wake the
    daemon, in one transaction; returns the recipient count. Nothing is stored when the
    `recipients` iterator raises, or (RunRejected) when it yields nothing."""
    async with conn.transaction():
        await conn.execute(
            """INSERT INTO hanjullo.runs (id, campaign_id, node_id, company_id, user_id,
                   callback_number, message_type, message_subject, is_ad, scheduled_at,
                   status, queued_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'queued', now())""",
            run_id,
            campaign_id,
            node_id,
            company_id,
            user_id,
            callback,
            message_type,
            subject,
            is_ad,
            scheduled_at,
        )
        await conn.copy_records_to_table(
            "run_recipients", schema_name="hanjullo", records=recipients, columns=RECIPIENT_COLUMNS
        )
        first = await conn.fetchrow(
            """UPDATE hanjullo.runs SET target_count =
                   (SELECT count(*) FROM hanjullo.run_recipients WHERE run_id = $1),
                   message_content = (SELECT message_text FROM hanjullo.run_recipients
                                      WHERE run_id = $1 AND seq = 1)
               WHERE id = $1 RETURNING target_count""",
            run_id,
        )
        if first is None or first["target_count"] == 0:
            raise RunRejected("a run needs at least one recipient; fix: check the input file")
        await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, node_id)
    return int(first["target_count"])


async def run_row(conn: Conn, run_id: uuid.UUID) -> asyncpg.Record | None:
    """Every column of one run, for the operator's view."""
    return await conn.fetchrow("SELECT * FROM hanjullo.runs WHERE id = $1", run_id)


async def run_rows_of_campaign(
    conn: Conn, campaign_id: uuid.UUID, limit: int
) -> list[asyncpg.Record]:
    """Every column of a campaign's runs, newest first."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """SELECT * FROM hanjullo.runs WHERE campaign_id = $1
           ORDER BY queued_at DESC, run_number DESC, id LIMIT $2""",
        campaign_id,
        limit,
    )
    return rows


async def run_rows(
    conn: Conn,
    node_id: str,
    *,
    company_id: str | None = None,
    campaign_id: uuid.UUID | None = None,
    statuses: tuple[str, ...] = (),
    limit: int = 100,
) -> list[asyncpg.Record]:
    """Every column of a node's runs, newest first: a company's, a campaign's, in some
    statuses (each filter optional), at most `limit`."""
    clauses = ["node_id = $1"]
    args: list[Any] = [node_id]
    for column, value in (("company_id", company_id), ("campaign_id", campaign_id)):
        if value is not None:
            args.append(value)
            clauses.append(f"{column} = ${len(args)}")
    if statuses:
        args.append(list(statuses))
        clauses.append(f"status = ANY(${len(args)}::text[])")
    args.append(limit)
    rows: list[asyncpg.Record] = await conn.fetch(
        f"SELECT * FROM hanjullo.runs WHERE {' AND '.join(clauses)}"
        f" ORDER BY queued_at DESC, run_number DESC, id LIMIT ${len(args)}",
        *args,
    )
    return rows


async def prune_finished(conn: Conn, node_id: str, days: int) -> str:
    """Delete the recipients of runs finished more than `days` ago (the runs stay)."""
    result: str = await conn.execute(
        """DELETE FROM hanjullo.run_recipients r USING hanjullo.runs c
           WHERE r.run_id = c.id AND c.node_id = $1
           AND c.status IN ('completed', 'cancelled', 'rejected')
           AND c.completed_at < now() - make_interval(days => $2)""",
        node_id,
        days,
    )
    return result
